"""Train one round of policies: the global baseline plus the configured strategy's adapters.

``train_policies`` is the stage's entry point. It asks the strategies for a plan (which adapters,
on which segments' rows, with which system prompts), trains each adapter with the configured
algorithm module, saves it, and records everything in an ``AdapterRegistry``.
"""

from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path

from datasets import Dataset
from tqdm.auto import tqdm

from rlhf_persona import distributed
from rlhf_persona.config import PolicyConfig
from rlhf_persona.errors import UserError
from rlhf_persona.policy import sft
from rlhf_persona.policy.algorithms import ALGORITHMS, Algorithm
from rlhf_persona.policy.card import fix_base_reference, write_card
from rlhf_persona.policy.common import (
    RewardFn,
    check_online_batch,
    load_adapter,
    load_base,
    require_columns,
    resolve_device,
    trainer_callbacks,
)
from rlhf_persona.policy.registry import GLOBAL, AdapterInfo, AdapterRegistry
from rlhf_persona.policy.strategies import STRATEGIES, GlobalStrategy, Plan, Route, TrainJob


def train_policies(
    policy_cfg: PolicyConfig,
    base_spec: str,
    data: Dataset,
    cards: dict[int, str],
    out_dir: str | Path,
    reward_fn: RewardFn | None = None,
    run=None,
    round: int = 0,
    *,
    device: str | None = None,
    bf16: bool = False,
    cache_dir: Path | None = None,
    seed: int = 0,
    init_from: AdapterRegistry | None = None,
    attn_implementation: str | None = None,
) -> AdapterRegistry:
    """Train the global baseline (if ``policy_cfg.train_global``) and the strategy's adapters.

    Args:
        policy_cfg: the ``policy:`` config section (algorithm, strategy, steps, LoRA, ...).
        base_spec: default base model spec (``models.policy``); ``policy_cfg.segment_models``
            overrides it per segment.
        data: training rows with a ``segment_id`` column. dpo: prompt, chosen, rejected
            (``export_preference``); kto: prompt, completion, label (``export_kto``);
            grpo/rloo/ppo: prompt (any of the exports; only prompts are used).
        cards: segment id → persona text (the segment card), used by the ``prompt`` strategy.
        out_dir: registry folder for this round (``manifest.json`` + ``adapters/``).
        reward_fn: grpo/rloo/ppo only: ``fn(prompts, completions, segment_id, **kw) -> list[float]``
            on plain-text user prompts and replies, e.g. ``reward.make_reward_fn(rm)`` or a
            simulated-user scorer.
        run: a tracking ``Run``: each adapter's summary at ``step=round``, its per-step curve live.
        round: loop round, recorded in the manifest.
        device: ``auto``/None (CUDA if available), ``cpu`` or ``cuda``; bf16 only on CUDA.
        seed: seed of every trainer (data order, LoRA init, sampling).
        init_from: previous round's registry: adapters with the same name and base model continue
            training from there (and are the KL reference) instead of starting from zero.
        attn_implementation: the base model's attention kernel (``models.attn_implementation``).

    Under several processes (``accelerate launch``) every process calls this with the same
    arguments: each trains on its share of every batch, the main process alone saves.

    Returns:
        The saved ``AdapterRegistry``: adapters per segment (+ ``global``) and their routes.
    """
    algo = _algorithm(policy_cfg, data, reward_fn)
    device = resolve_device(device)
    segments = sorted({int(s) for s in data["segment_id"]} | {int(s) for s in cards})
    registry = AdapterRegistry(out_dir, base_spec, round, policy_cfg.algorithm, policy_cfg.strategy)
    strategies = [GlobalStrategy] if policy_cfg.train_global else []
    strategies.append(STRATEGIES.get(policy_cfg.strategy))
    plans = [s().plan(segments, cards, base_spec, policy_cfg.segment_models) for s in strategies]
    jobs = [job for plan in plans for job in plan.jobs]
    jobs = [job for job in jobs if _rows(data, job.segments) >= policy_cfg.min_rows]
    desc = f"policy round {round} ({policy_cfg.algorithm})"
    bar = tqdm(jobs, desc=desc, unit="adapter", disable=not distributed.is_main())
    load = dict(device=device, bf16=bf16, cache_dir=cache_dir, attn=attn_implementation)
    for job in bar:
        bar.set_postfix_str(job.name)
        with _quiet_datasets(), _curve_logging(run, job.name):
            info = _train_job(
                job,
                algo,
                policy_cfg,
                data,
                registry,
                reward_fn,
                load,
                seed,
                init_from,
            )
        registry.add_adapter(info)
        if distributed.is_main():
            write_card(registry.adapter_dir(job.name), info, policy_cfg, cards, round,
                       job.system_prompts)  # fmt: skip
        if run is not None:
            run.log({job.name: info.metrics}, step=round, stage="policy")
    _apply_routes(registry, plans)
    if distributed.is_main():
        registry.save()
    distributed.barrier()  # the next stage may read the manifest on any process
    return registry


def _curve_logging(run, name: str):
    """Each trainer of the adapter logs its per-step curve to W&B ``policy_train/NAME/*``."""
    if run is None:
        return contextlib.nullcontext()
    from rlhf_persona.tracking import trainer_logger

    return trainer_callbacks(trainer_logger(run, name, "policy_train"))


@contextlib.contextmanager
def _quiet_datasets():
    """No per-map/filter progress bars from ``datasets`` inside a round's own progress bar."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _algorithm(cfg: PolicyConfig, data: Dataset, reward_fn: RewardFn | None) -> Algorithm:
    algo = ALGORITHMS.get(cfg.algorithm)
    require_columns(data, (*algo.columns, "segment_id"), cfg.algorithm)
    if algo.online and reward_fn is None:
        raise UserError(
            f"policy.algorithm={cfg.algorithm} is online: it needs a reward_fn (a reward model "
            "via reward.make_reward_fn, or simulated users' feedback)"
        )
    if algo.grouped:
        check_online_batch(cfg)
    return algo


def _rows(data: Dataset, segments: list[int]) -> int:
    wanted = set(segments)
    return sum(int(s) in wanted for s in data["segment_id"])


def _job_rows(data: Dataset, job: TrainJob) -> Dataset:
    """The job's segments' rows, each with its segment's system prompt (or None)."""
    wanted = set(job.segments)
    rows = data.filter(lambda r: int(r["segment_id"]) in wanted)
    systems = [job.system_prompts.get(int(s)) for s in rows["segment_id"]]
    if "system" in rows.column_names:
        rows = rows.remove_columns("system")
    return rows.add_column("system", systems)


def _format(rows: Dataset, algo: Algorithm, tokenizer) -> Dataset:
    """``algo``: an ``Algorithm`` or the ``sft`` module (anything with ``format_row``)."""
    return rows.map(lambda r: algo.format_row(r, tokenizer), remove_columns=rows.column_names)


def _start_model(job: TrainJob, load: dict, init_from: AdapterRegistry | None):
    """Base model (+ the previous round's adapter of the same name, trainable, when given)."""
    model, tokenizer = load_base(job.base_model, load["device"], load["bf16"],
                                 load["cache_dir"], load["attn"])  # fmt: skip
    prev = init_from.adapters.get(job.name) if init_from is not None else None
    if prev is not None and prev.base_model == job.base_model:
        path = init_from.adapter_path(job.name)
        model = load_adapter(model, path, trainable=True, spec=job.base_model)
    return model, tokenizer


def _train_job(
    job: TrainJob,
    algo: Algorithm,
    cfg: PolicyConfig,
    data: Dataset,
    registry: AdapterRegistry,
    reward_fn: RewardFn | None,
    load: dict,
    seed: int,
    init_from: AdapterRegistry | None,
) -> AdapterInfo:
    start = time.perf_counter()
    rows = _job_rows(data, job)
    model, tokenizer = _start_model(job, load, init_from)
    scratch = registry.root / "trainer" / job.name  # TRL's output_dir; nothing is saved there
    common = dict(device=load["device"], bf16=load["bf16"], seed=seed, reward_fn=reward_fn)
    history: list[dict] = []
    if cfg.warm_start_steps > 0:
        liked = sft.liked_rows(rows)
        if len(liked) > 0:
            warm_cfg = cfg.model_copy(update={"steps": cfg.warm_start_steps})
            trainer = sft.train(
                model, tokenizer, _format(liked, sft, tokenizer), warm_cfg, scratch, **common
            )
            history += [{**h, "phase": "sft"} for h in trainer.state.log_history]
            model = trainer.model
    trainer = algo.train(model, tokenizer, _format(rows, algo, tokenizer), cfg, scratch, **common)
    history += trainer.state.log_history
    out = registry.adapter_dir(job.name)
    # PEFT reads the base's config at save time: give it the loaded folder (a continued
    # adapter's config holds the portable spec written below, which PEFT cannot open).
    base_path = trainer.model.get_base_model().config.name_or_path
    trainer.model.peft_config["default"].base_model_name_or_path = base_path
    # Only the trained adapter: TRL may add a frozen "ref" copy when warm-starting.
    if distributed.is_main():  # every process holds the same weights (DDP)
        trainer.model.save_pretrained(str(out), selected_adapters=["default"])
        tokenizer.save_pretrained(str(out))  # with its chat template: the folder serves alone
        fix_base_reference(out, job.base_model)
    info = AdapterInfo(
        name=job.name,
        base_model=job.base_model,
        path=str(out.relative_to(registry.root)),
        segments=job.segments,
        data_size=len(rows),
        metrics=_summarise(history),
        train_s=round_s(time.perf_counter() - start),
        steps=int(trainer.state.global_step),
    )
    del trainer, model
    gc.collect()
    return info


def round_s(seconds: float) -> float:
    return float(f"{seconds:.2f}")


def _summarise(history: list[dict]) -> dict:
    """Last logged value of each numeric metric, plus the loss curve (for plots)."""
    steps = [h for h in history if "loss" in h and h.get("phase") != "sft"]
    final = dict(steps[-1]) if steps else {}
    final.pop("step", None)
    final.pop("epoch", None)
    summary = {k: float(v) for k, v in final.items() if isinstance(v, int | float)}
    summary["loss_curve"] = [float(h["loss"]) for h in steps]
    return summary


def _apply_routes(registry: AdapterRegistry, plans: list[Plan]) -> None:
    """Routes whose adapter was trained, later plans (the strategy) overriding the global one;
    the ``global`` key always serves the global adapter."""
    for plan in plans:
        for seg, route in plan.routes.items():
            if route.adapter in registry.adapters:
                registry.set_route(seg, route)
    if GLOBAL in registry.adapters:
        registry.set_route(GLOBAL, Route(GLOBAL))
