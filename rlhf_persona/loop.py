"""The closed loop: collect → segment → reward → policy → evaluate, one round at a time.

Each round:

1. **collect**: the current policies (the base model in round 0, then the previous round's
   adapters, each user routed by their segment) answer the simulated users' prompts, some turns
   as A/B pairs; the users' feedback goes through the feedback store like real users' would;
2. **segment**: segmentation refits on everything in the store, keeping segment ids stable;
3. **reward**: the segment-conditioned reward model trains on the store's preference export;
4. **policy**: the policies train (DPO / KTO on the store's exports, plus pairs the reward model
   ranks among sampled replies; GRPO / RLOO online against the reward model or the simulator);
5. **evaluate**: the simulator's hidden truth scores base, global and personalized policies.

Files: ``RUN_DIR/feedback.db`` (unless ``store.url``), ``metrics.jsonl``, ``config.yaml``,
``wandb/``, and ``round_N/`` with ``seg/``, ``reward/``, ``policy/``, ``data/`` (the training
rows as JSON lines), ``samples.json``
and ``round.json`` (written last: a round without it is redone on resume).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from datasets import Dataset, concatenate_datasets
from rich.console import Console
from rich.table import Table

from rlhf_persona import distributed
from rlhf_persona.config import ExperimentConfig
from rlhf_persona.policy.generate import generation_progress
from rlhf_persona.tracking import Run, start_run

console = Console()
ROUND_DONE = "round.json"
STREAM_COLLECT = 201


@dataclass
class LoopState:
    """What one round hands to the next."""

    round: int = 0
    registry_dir: Path | None = None
    segmenter_dir: Path | None = None
    stage_s: dict = field(default_factory=dict)


@contextmanager
def _stage(timings: dict, name: str):
    console.print(f"[bold]· {name}[/bold]")
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)
    console.print(f"  {name} done in {timings[name]:.1f} s")


class Loop:
    """Runs the rounds of one experiment config; ``run()`` resumes after the last done round."""

    def __init__(self, cfg: ExperimentConfig):
        from rlhf_persona.feedback import FeedbackStore
        from rlhf_persona.simulation import FeedbackSimulator, load_population

        self.cfg = cfg
        if cfg.models.torch_threads:
            import torch

            torch.set_num_threads(cfg.models.torch_threads)
        self.dir = cfg.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        population = load_population(cfg.population.name)
        self.users = population.sample_users(cfg.population.users, seed=cfg.run.seed)
        self.sim = FeedbackSimulator(self.users, seed=cfg.run.seed, embed=cfg.loop.embed_features)
        self.store = None  # only the main process of several (accelerate launch) writes
        if distributed.is_main():
            self.store = FeedbackStore(cfg.store.url or (self.dir / "feedback.db"))
            self.store.upsert_users(self.users.records())

    # -- orchestration --------------------------------------------------------------------
    def run(self) -> dict:
        if not distributed.is_main():
            return self._train_beside_main()
        state = self._resume_state()
        with start_run(self.cfg, resume=state.round > 0) as run:
            if state.round > 0:
                console.print(f"resuming after round {state.round - 1}")
                self._replay_lost(run, state.round)
            last = None
            for r in range(state.round, self.cfg.loop.rounds):
                last = self.run_round(r, state, run)
            summary = last or self._read_round(self.cfg.loop.rounds - 1)
            run.summary({"final": summary["eval"]})
        distributed.share(None)  # the other processes' loop ends too
        return summary

    def _replay_lost(self, run: Run, rounds: int) -> None:
        """W&B records, tables and artifacts of done rounds that a killed process lost."""
        from rlhf_persona.policy import AdapterRegistry

        for r in sorted(run.replay_lost(rounds)):
            rdir = self.dir / f"round_{r}"
            run.round = r
            samples = json.loads((rdir / "samples.json").read_text())
            log_round_artifacts(run, rdir, AdapterRegistry.load(rdir / "policy"), samples)

    def _train_beside_main(self) -> dict:
        """A non-main process: train each round's reward model and policies with the main
        process (data parallel) on the inputs it shares, until it shares None."""
        from rlhf_persona.policy import train_policies

        rm = None
        while (job := distributed.share()) is not None:
            stage, args = job
            if stage == "reward":
                rm = self._fit_reward(*args, run=None)
            else:
                kwargs, assignments = args
                train_policies(**kwargs, reward_fn=self._online_reward(rm, assignments))
        return {}

    def run_round(self, r: int, state: LoopState, run: Run) -> dict:
        rdir = self.dir / f"round_{r}"
        rdir.mkdir(parents=True, exist_ok=True)
        timings: dict = {}
        run.round = r
        console.rule(f"round {r}")
        with _stage(timings, "collect"):
            collected = self.collect(r, state)
        with _stage(timings, "segment"):
            segmenter = self.segment(r, state, rdir)
            assignments = self.store.current_segments(f"round-{r}")
            cards = {c.segment_id: c.persona_text for c in segmenter.cards_}
        with _stage(timings, "reward"):
            rm = self.train_reward(r, rdir, assignments, segmenter.cards_, run)
        with _stage(timings, "policy"):
            registry = self.train_policy(r, state, rdir, assignments, cards, rm, run)
        with _stage(timings, "evaluate"):
            metrics, samples = self.evaluate(r, registry, rm, assignments)
        sizes = {str(c.segment_id): int(c.size) for c in segmenter.cards_}
        record = {"round": r, "collected": collected, "segment_sizes": sizes, **metrics}
        run.log({**record, "stage_s": timings}, step=r, stage="eval")
        (rdir / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False))
        log_round_artifacts(run, rdir, registry, samples)
        done = {"round": r, "eval": record, "stage_s": timings}
        (rdir / ROUND_DONE).write_text(json.dumps(done, indent=1))
        state.round, state.registry_dir, state.segmenter_dir = r + 1, registry.root, rdir / "seg"
        print_round_table(record)
        return done

    # -- stages ---------------------------------------------------------------------------
    def _generator(self, registry_dir: Path | None):
        """The policies saved in ``registry_dir`` (the base model alone when None)."""
        from rlhf_persona.policy import AdapterRegistry

        if registry_dir is None:
            return self._serve(AdapterRegistry(self.dir / "base", self.cfg.models.policy))
        return self._serve(AdapterRegistry.load(registry_dir))

    def _serve(self, registry, batch_size: int | None = None):
        from rlhf_persona.policy.backends import make_generator

        m = self.cfg.models
        return make_generator(
            registry,
            m.generation_backend,
            device=m.device,
            bf16=m.bf16,
            cache_dir=m.cache_dir,
            batch_size=batch_size or self.cfg.loop.generation_batch_size,
            attn_implementation=m.attn_implementation,
        )

    def _eval_generator(self, registry):
        return self._serve(registry, self.cfg.loop.eval_generation_batch_size)

    def collect(self, r: int, state: LoopState) -> dict:
        """Current policies answer every user's prompts; feedback goes into the store."""
        from rlhf_persona.policy.registry import BASE
        from rlhf_persona.simulation import sample_prompts

        lc, seed = self.cfg.loop, self.cfg.run.seed
        generator = self._generator(state.registry_dir)
        assignments = self.store.current_segments(f"round-{r - 1}") if r > 0 else {}
        idx = np.repeat(np.arange(len(self.users)), lc.prompts_per_user)
        prompts, _ = sample_prompts(self.users, idx, seed=seed, round=r)
        keys = [assignments.get(self.users.ids[i], BASE) for i in idx]
        gen = {"max_new_tokens": lc.max_new_tokens, "temperature": lc.temperature}
        ab = np.random.default_rng([seed, STREAM_COLLECT, r]).random(len(idx)) < lc.ab_share
        ab_pos = np.flatnonzero(ab)
        with generation_progress(len(idx) + len(ab_pos), f"collect round {r}"):
            replies = generator.generate(keys, prompts, seed=seed + 1000 * r, **gen)
            others = generator.generate(
                [keys[j] for j in ab_pos], [prompts[j] for j in ab_pos],
                seed=seed + 1000 * r + 1, **gen,
            )  # fmt: skip
        self._record_replies(generator, keys, prompts, replies, ab_pos, others)
        single = np.flatnonzero(~ab)
        events = self.sim.respond(
            idx[single], [prompts[j] for j in single], [replies[j] for j in single], round=r
        ) + self.sim.respond(
            idx[ab_pos], [prompts[j] for j in ab_pos], [replies[j] for j in ab_pos], others, round=r
        )
        results = self.store.record_events(events)
        statuses: dict[str, int] = {}
        for res in results:
            statuses[res.status] = statuses.get(res.status, 0) + 1
        return {"turns": len(idx), "ab_turns": len(ab_pos), "events": statuses}

    def _record_replies(self, generator, keys, prompts, replies, ab_pos, others) -> None:
        """Store each reply with the policy that produced it (events then refer to them)."""
        rows = [(keys[j], prompts[j], replies[j]) for j in range(len(prompts))]
        rows += [(keys[j], prompts[j], o) for j, o in zip(ab_pos, others, strict=True)]
        for key, prompt, reply in rows:
            segment = key if isinstance(key, int) else None
            self.store.add_reply(prompt, reply, policy=generator.label(key), segment=segment)

    def segment(self, r: int, state: LoopState, rdir: Path):
        from rlhf_persona.segmentation import fit_from_store

        return fit_from_store(
            self.store,
            self.cfg.segmentation,
            run_id=f"round-{r}",
            previous_dir=state.segmenter_dir,
            out_dir=rdir / "seg",
            seed=self.cfg.run.seed,
        )

    def train_reward(self, r: int, rdir: Path, assignments: dict, cards: list, run: Run):
        from rlhf_persona.feedback.export import export_preference

        across = self.cfg.reward.pairs_across_prompts
        data, report = export_preference(
            self.store, assignments, across_prompts=across, since=self._since(r)
        )
        run.log({"export": report, "round": r}, step=r, stage="reward")
        save_data(data, rdir / "data" / "reward_pairs.jsonl")
        rm = self._fit_reward(data, cards, run=run)
        rm.save(rdir / "reward")
        return rm

    def _fit_reward(self, data, cards: list, run):
        """Train the reward model; under several processes, all of them train it together."""
        from rlhf_persona.reward import build_reward_model

        if distributed.launched() and distributed.is_main():
            distributed.share(("reward", (data, cards)))
        rm = build_reward_model(self.cfg.reward, self.cfg.models.encoder, cards)
        rm.fit(data, run=run)
        if self.cfg.reward.user_level:  # per-user residuals on top (saves the base beside them)
            rm = self._user_level(rm, data)
        return rm

    def _user_level(self, rm, data):
        from rlhf_persona.reward.user_level import ReplyFeaturizer, UserLevelReward

        rc, m = self.cfg.reward, self.cfg.models
        featurizer = ReplyFeaturizer(rc.user_features, rc.user_dims, m.encoder, m.cache_dir)
        return UserLevelReward(rm, featurizer, rc.user_shrinkage).fit(data)

    def train_policy(self, r, state, rdir, assignments, cards, rm, run):
        from rlhf_persona.policy import train_policies

        cfg = self.cfg
        data = self._policy_data(r, state, assignments, rm)
        save_data(data, rdir / "data" / f"policy_{cfg.policy.algorithm}.jsonl")
        init = None
        if state.registry_dir is not None and cfg.loop.continue_adapters:
            from rlhf_persona.policy import AdapterRegistry

            init = AdapterRegistry.load(state.registry_dir)
        kwargs = dict(
            policy_cfg=cfg.policy,
            base_spec=cfg.models.policy,
            data=data,
            cards=cards,
            out_dir=rdir / "policy",
            round=r,
            device=cfg.models.device,
            bf16=cfg.models.bf16,
            cache_dir=cfg.models.cache_dir,
            seed=cfg.run.seed,
            init_from=init,
            attn_implementation=cfg.models.attn_implementation,
        )
        if distributed.launched():  # the other processes train the same adapters with us
            distributed.share(("policy", (kwargs, assignments)))
        reward_fn = self._online_reward(rm, assignments)
        return train_policies(**kwargs, reward_fn=reward_fn, run=run)

    def _policy_data(self, r, state, assignments, rm) -> Dataset:
        """The store's export for the algorithm, plus reward-model-ranked pairs if configured."""
        from rlhf_persona.policy.algorithms import ALGORITHMS

        algo = ALGORITHMS.get(self.cfg.policy.algorithm)
        exported = policy_export(self.store, self.cfg, assignments, since=self._since(r))
        if self.cfg.loop.rm_pairs_per_segment <= 0 or algo.online:
            return exported
        ranked = self._ranked_pairs(r, state, assignments, rm, kto=algo.data == "thumbs")
        if len(ranked) == 0:
            return exported
        ranked = ranked.select_columns(exported.column_names).cast(exported.features)
        return concatenate_datasets([exported, ranked])

    def _since(self, r: int):
        """Start of the feedback window (``loop.feedback_window`` rounds up to round ``r``):
        simulated users give round ``r``'s feedback in its simulated week."""
        window = self.cfg.loop.feedback_window
        if window is None:
            return None
        from rlhf_persona.simulation.user import ROUND_SECONDS, START_TIME

        start = START_TIME + max(r - window + 1, 0) * ROUND_SECONDS
        return start.astype(datetime).replace(tzinfo=UTC)

    def _ranked_pairs(self, r, state, assignments, rm, kto: bool) -> Dataset:
        """Best-vs-worst of n sampled replies per prompt under the segment's reward model
        (iterative / online DPO): many clean pairs per segment from few user labels."""
        from rlhf_persona.simulation import sample_prompts

        lc, seed = self.cfg.loop, self.cfg.run.seed
        kto_rows = lc.rm_kto_rows if kto else None
        generator = self._generator(state.registry_dir)
        rng = np.random.default_rng([seed, STREAM_COLLECT + 1, r])
        by_seg: dict[int, list[int]] = {}
        for i, uid in enumerate(self.users.ids):
            if uid in assignments:
                by_seg.setdefault(int(assignments[uid]), []).append(i)
        rows: dict[str, list] = {}
        total = len(by_seg) * lc.rm_pairs_per_segment * lc.rm_candidates
        with generation_progress(total, f"reward-ranked candidates round {r}"):
            for seg, members in sorted(by_seg.items()):
                idx = rng.choice(members, size=lc.rm_pairs_per_segment, replace=True)
                prompts, _ = sample_prompts(self.users, idx, seed=seed + 7, round=r)
                cands = [
                    generator.generate(
                        [seg] * len(prompts),
                        prompts,
                        max_new_tokens=lc.max_new_tokens,
                        temperature=lc.temperature,
                        seed=seed + 31 * k + 1000 * r,
                    )
                    for k in range(lc.rm_candidates)
                ]
                scores = np.stack([rm.score([seg] * len(prompts), prompts, c) for c in cands])
                user_ids = [self.users.ids[i] for i in idx]
                ranked = ranked_rows(prompts, cands, scores, user_ids, seg, kto_rows)
                for key, values in ranked.items():
                    rows.setdefault(key, []).extend(values)
        return Dataset.from_dict(rows)

    def _online_reward(self, rm, assignments):
        from rlhf_persona.policy.algorithms import ALGORITHMS

        if not ALGORITHMS.get(self.cfg.policy.algorithm).online:
            return None
        if self.cfg.loop.online_reward == "model":
            from rlhf_persona.reward import make_reward_fn

            return make_reward_fn(rm)
        return simulated_thumbs_reward(self.sim, assignments, self.cfg.run.seed)

    def evaluate(self, r, registry, rm, assignments):
        from rlhf_persona.evaluation import eval_items, evaluate_policies, replies_to_generate

        lc = self.cfg.loop
        items = eval_items(
            self.users,
            assignments,
            lc.eval_users_per_segment,
            self._eval_prompts(r),
            self.cfg.run.seed,
        )
        best_of_n, diagnostic = self.cfg.reward.best_of_n, lc.eval_diagnostic_prompts
        total = replies_to_generate(items, registry.segments, rm is not None, best_of_n, diagnostic)
        with generation_progress(total, f"evaluate round {r}"):
            return evaluate_policies(
                self.users,
                items,
                self._eval_generator(registry),
                rm,
                round=r,
                embed=lc.embed_features,
                seed=self.cfg.run.seed + 5000,
                max_new_tokens=lc.max_new_tokens,
                temperature=lc.temperature,
                best_of_n=best_of_n,
                diagnostic_prompts=diagnostic,
            )

    def _eval_prompts(self, r: int) -> int:
        lc = self.cfg.loop
        if r == lc.rounds - 1 and lc.final_eval_prompts_per_user is not None:
            return lc.final_eval_prompts_per_user
        return lc.eval_prompts_per_user

    # -- resume ---------------------------------------------------------------------------
    def _read_round(self, r: int) -> dict:
        return json.loads((self.dir / f"round_{r}" / ROUND_DONE).read_text())

    def _resume_state(self) -> LoopState:
        state = LoopState()
        while (self.dir / f"round_{state.round}" / ROUND_DONE).exists():
            rdir = self.dir / f"round_{state.round}"
            state.registry_dir, state.segmenter_dir = rdir / "policy", rdir / "seg"
            state.round += 1
        return state


def ranked_rows(prompts, cands, scores, user_ids, segment: int, kto_rows: str | None) -> dict:
    """Training rows from the best vs the worst candidate of each prompt by ``scores``
    [candidate, prompt]: preference rows (``kto_rows`` None), or KTO rows — the best as
    desirable and the worst as undesirable (``both``), or the best alone (``chosen``)."""
    rows: dict[str, list] = {}
    best, worst = scores.argmax(0), scores.argmin(0)
    for j, prompt in enumerate(prompts):
        if best[j] == worst[j]:
            continue
        chosen, rejected = cands[best[j]][j], cands[worst[j]][j]
        common = {"user_id": user_ids[j], "segment_id": segment}
        if kto_rows is None:
            margin = float(scores[best[j], j] - scores[worst[j], j])
            _append(rows, prompt=prompt, chosen=chosen, rejected=rejected, margin=margin, **common)
            continue
        labelled = [(chosen, True), (rejected, False)] if kto_rows == "both" else [(chosen, True)]
        for text, label in labelled:
            _append(rows, prompt=prompt, completion=text, label=label, **common)
    return rows


def _append(rows: dict[str, list], **values) -> None:
    for key, value in values.items():
        rows.setdefault(key, []).append(value)


def simulated_thumbs_reward(sim, assignments: dict, seed: int):
    """GRPO/RLOO reward from simulated users' thumbs: each completion is rated (+1/-1) by a
    random user of the row's segment, as live users would rate it online."""
    users = sim.users
    members: dict[int, np.ndarray] = {}
    for i, uid in enumerate(users.ids):
        if uid in assignments:
            members.setdefault(int(assignments[uid]), []).append(i)
    members = {s: np.array(v) for s, v in members.items()}
    rng = np.random.default_rng([seed, 303])

    def reward_fn(prompts, completions, segment_id, **kwargs) -> list[float]:
        from rlhf_persona.reward.data import message_text

        texts = [message_text(p, "user") for p in prompts]
        replies = [message_text(c, "assistant") for c in completions]
        idx = np.array([rng.choice(members[int(s)]) for s in segment_id])
        batch, _ = sim.respond_texts(idx, texts, replies, kind="thumbs")
        return [float(v) for v in batch.value]

    reward_fn.__name__ = "simulated_thumbs"
    return reward_fn


def policy_export(store, cfg: ExperimentConfig, assignments: dict, since=None) -> Dataset:
    """The store's rows the configured policy algorithm trains on, as its ``data`` asks: thumbs
    (every thumb, every clear rating, A/B choices if ``loop.kto_pairwise``) or preference pairs
    (``pairs``; ``online`` algorithms use only their prompts), each with its user's segment from
    ``assignments``."""
    from rlhf_persona.feedback.export import export_kto, export_preference
    from rlhf_persona.policy.algorithms import ALGORITHMS

    if ALGORITHMS.get(cfg.policy.algorithm).data == "thumbs":
        pairwise = cfg.loop.kto_pairwise
        return export_kto(store, assignments, ratings=True, pairwise=pairwise, since=since)[0]
    return export_preference(store, assignments, since=since)[0]


def print_round_table(record: dict) -> None:
    table = Table(title=f"round {record['round']}: true thumbs-up rate per segment")
    best = "best_of_n" in next(iter(record["segments"].values()), {})
    n = record.get("best_of_n", {}).get("n")
    cols = ("segment", "base", "global", "personalized", "gain (95% CI)")
    for col in cols + best * (f"best-of-{n}",):
        table.add_column(col)
    for seg, vals in sorted(record["segments"].items()):
        b, g, p = (vals[k]["thumbs_up"] for k in ("base", "global", "personalized"))
        extra = (f"{vals['best_of_n']['thumbs_up']:.3f}",) if best else ()
        gain = record.get("gain", {}).get(seg, {}).get("vs_base")
        ci = f" ±{(gain['ci95'][1] - gain['ci95'][0]) / 2:.3f}" if gain else ""
        table.add_row(seg, f"{b:.3f}", f"{g:.3f}", f"{p:.3f}", f"{p - b:+.3f}{ci}", *extra)
    console.print(table)
    kl = record.get("kl", {})
    console.print(
        f"KL from base (nats/reply): global {kl.get('global', float('nan')):.3f}, "
        f"personalized {kl.get('personalized', float('nan')):.3f}; "
        f"spread (best − worst segment) {record.get('spread', float('nan')):.3f}"
    )


def save_data(data: Dataset, path: Path) -> None:
    """A round's training rows as JSON lines (``load_dataset("json", data_files=...)`` reads
    them): logged with the round's artifacts, so a policy's data travels with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in data:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def log_round_artifacts(run: Run, rdir: Path, registry, samples: dict) -> None:
    """The round's sample replies as a W&B table, and its adapters, reward model, segmenter and
    training data as artifacts (one version per round, aliased ``round-N``)."""
    policies = sorted({p for items in samples.values() for it in items for p in it} - {"prompt"})
    rows = [[seg, it["prompt"], *(it.get(p, "") for p in policies)]
            for seg, items in sorted(samples.items()) for it in items]  # fmt: skip
    run.log_table("eval/samples", ["segment", "prompt", *policies], rows)
    for name, info in registry.adapters.items():
        meta = {"base_model": info.base_model, "segments": info.segments,
                "data_size": info.data_size, "algorithm": registry.algorithm}  # fmt: skip
        run.log_artifact(registry.adapter_path(name), f"adapter-{name}", "model", meta)
    run.log_artifact(rdir / "reward", "reward-model", "model")
    run.log_artifact(rdir / "seg", "segmenter", "segmenter")
    run.log_artifact(rdir / "data", "training-data", "dataset")


def run_loop(cfg: ExperimentConfig) -> tuple[dict, Path]:
    """Run (or resume) the loop, then write the report; returns the last round and report path."""
    from rlhf_persona.report import write_report

    summary = Loop(cfg).run()
    return summary, write_report(cfg.run_dir) if distributed.is_main() else None
