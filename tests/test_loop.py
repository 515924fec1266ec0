"""The closed loop on a tiny config: a real run, a real SIGKILL mid-round, resume, report."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlhf_persona.report import PLOTS, write_report
from rlhf_persona.tracking import read_metrics, read_wandb_records

TINY = {
    "run": {"name": "tiny", "seed": 0},
    "tracking": {"wandb_mode": "offline"},
    "models": {"policy": "embedded:tiny-test"},
    "population": {"name": "two_opposed", "users": 24},
    "segmentation": {"k": 2, "min_segment_size": 3, "features": "behaviour"},
    # per-user residuals on the heads model, and evaluation served best-of-2 by them
    "reward": {
        "strategy": "heads",
        "max_steps": 2,
        "max_length": 64,
        "user_level": True,
        "best_of_n": 2,
    },
    "policy": {"algorithm": "dpo", "steps": 1, "batch_size": 4, "min_rows": 1},
    "loop": {
        "rounds": 2,
        "prompts_per_user": 4,
        "ab_share": 0.5,
        "max_new_tokens": 12,
        "rm_pairs_per_segment": 4,
        "rm_candidates": 2,
        "eval_users_per_segment": 2,
        "eval_prompts_per_user": 1,
        "final_eval_prompts_per_user": 2,  # the last round: twice the rows
        "embed_features": False,
        "feedback_window": 1,  # each round learns from its own round's feedback only
    },
}


def _config(tmp_path: Path) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["run"]["runs_dir"] = str(tmp_path / "runs")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _loop_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "rlhf_persona.cli", "loop", str(config)]


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory, tiny_test_path):
    """Start the loop, SIGKILL it once round 1 has begun, then run it again to completion."""
    tmp = tmp_path_factory.mktemp("loop")
    config = _config(tmp)
    run_dir = tmp / "runs" / "tiny"
    log = (tmp / "first.log").open("w")
    proc = subprocess.Popen(
        _loop_cmd(config), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not (run_dir / "round_0" / "round.json").exists():
        assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "round 0 did not finish in time"
        time.sleep(0.5)
    round0_stamp = (run_dir / "round_0" / "round.json").stat().st_mtime_ns
    time.sleep(3)  # let round 1 start collecting
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, W&B's service process included
    proc.wait()
    assert not (run_dir / "round_1" / "round.json").exists()
    second = subprocess.run(
        _loop_cmd(config), capture_output=True, text=True, timeout=600, check=False
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return run_dir, round0_stamp, second.stdout + second.stderr


def test_resume_continues_after_last_completed_round(interrupted_then_resumed):
    run_dir, round0_stamp, stdout = interrupted_then_resumed
    assert "resuming after round 0" in stdout
    # round 0 was not redone; round 1 completed
    assert (run_dir / "round_0" / "round.json").stat().st_mtime_ns == round0_stamp
    assert json.loads((run_dir / "round_1" / "round.json").read_text())["round"] == 1
    evals = [m for m in read_metrics(run_dir) if m.get("stage") == "eval"]
    assert [m["round"] for m in evals] == [0, 1]


def test_loop_records_per_segment_evaluation(interrupted_then_resumed):
    run_dir, _, stdout = interrupted_then_resumed
    last = json.loads((run_dir / "round_1" / "round.json").read_text())["eval"]
    assert set(last["segments"]) == {"brief_casual", "thorough_formal"}
    for vals in last["segments"].values():
        for policy in ("base", "global", "personalized"):
            assert 0.0 <= vals[policy]["thumbs_up"] <= 1.0
    assert last["kl"]["personalized"] >= 0.0
    assert "reward" in last and 0.0 <= last["reward"]["worst_acc"] <= 1.0
    assert "report:" in stdout and "thumbs-up rate per segment" in stdout
    # round 0 asks each evaluated user 1 held-out prompt, the last round 2
    first = json.loads((run_dir / "round_0" / "round.json").read_text())["eval"]
    rows = [sum(v["base"]["n"] for v in rec["segments"].values()) for rec in (first, last)]
    assert rows == [4, 8]  # 2 users of each of 2 segments
    # best-of-n serving with the user-level reward is evaluated beside the policies
    assert last["best_of_n"]["n"] == 2 and last["best_of_n"]["latency_s_per_request"] > 0
    assert all(0.0 <= v["best_of_n"]["thumbs_up"] <= 1.0 for v in last["segments"].values())
    assert "best-of-2" in stdout
    assert (run_dir / "round_1" / "reward" / "user_level.json").is_file()
    # adapters of each round are saved with their manifest
    manifest = json.loads((run_dir / "round_1" / "policy" / "manifest.json").read_text())
    assert manifest["round"] == 1 and "global" in manifest["adapters"]


def test_feedback_window_keeps_earlier_rounds_out_of_training(interrupted_then_resumed):
    run_dir, _, _ = interrupted_then_resumed
    records = read_metrics(run_dir)
    exports = {m["round"]: m["export"] for m in records if "export" in m and "round" in m}
    assert exports[0]["dropped"].get("before_since", 0) == 0
    assert exports[1]["dropped"]["before_since"] > 0  # round 0's votes are outside the window
    assert exports[1]["rows"] > 0


def test_resumed_round_does_not_duplicate_feedback(interrupted_then_resumed):
    run_dir, _, _ = interrupted_then_resumed
    from rlhf_persona.feedback import FeedbackStore

    store = FeedbackStore(run_dir / "feedback.db")
    events = store.events(history=True)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    collected = [
        json.loads((run_dir / f"round_{r}" / "round.json").read_text())["eval"]["collected"]
        for r in (0, 1)
    ]
    assert all(c["events"].get("error", 0) == 0 for c in collected)


def test_report_renders_every_plot(interrupted_then_resumed):
    run_dir, _, _ = interrupted_then_resumed
    index = write_report(run_dir)
    html = index.read_text()
    for name in PLOTS:
        png = index.parent / f"{name}.png"
        assert png.stat().st_size > 1000, name
        assert f'src="{name}.png"' in html
    assert "Sample replies" in html and "personalized" in html


def test_wandb_history_keeps_every_round(interrupted_then_resumed):
    """Read back with W&B's own reader: every round's evaluation, policy and reward records are
    in the history against ``round`` (not dropped for a step behind W&B's counter), trainers'
    per-step curves against their own steps, the sample replies as a table, and the round's
    adapters, reward model, segmenter and data as artifacts, across the killed and the resumed
    process."""
    run_dir, _, _ = interrupted_then_resumed
    records = read_wandb_records(run_dir)  # W&B's reader takes a second or two per log file
    history = [r["history"]["item"] for r in records if r["type"] == "history"]

    def rounds_with(key: str) -> set:
        return {h["round"] for h in history if key in h and "round" in h}

    for key in ("eval/segments/brief_casual/personalized/thumbs_up", "eval/kl/personalized",
                "eval/gain/brief_casual/vs_base/mean", "eval/stage_s/policy",
                "policy/segment_0/loss", "policy/global/rewards/margins",
                "reward/export/rows", "reward/pairs", "eval/samples._type"):  # fmt: skip
        assert rounds_with(key) == {0, 1}, key
    curve = [h for h in history if "policy_train/segment_1/loss" in h]
    assert curve and all("policy_train/segment_1/step" in h for h in curve)
    assert any("reward_train/heads/all/accuracy" in h for h in history)
    axes = {m["metric"].get("glob_name"): m["metric"].get("step_metric")
            for m in records if m["type"] == "metric"}  # fmt: skip
    assert axes["eval/*"] == axes["policy/*"] == axes["reward/*"] == "round"
    assert axes["policy_train/segment_1/*"] == "policy_train/segment_1/step"
    artifacts = {(a["artifact"]["name"], a["artifact"]["type"])
                 for a in records if a["type"] == "artifact"}  # fmt: skip
    assert {("adapter-segment_0", "model"), ("adapter-global", "model"), ("reward-model", "model"),
            ("segmenter", "segmenter"), ("training-data", "dataset")} <= artifacts  # fmt: skip


def test_progress_bars_stage_times_and_no_library_chatter(interrupted_then_resumed):
    _, _, out = interrupted_then_resumed
    out = out.replace("\r", "\n")
    for bar in ("collect round 1", "reward-ranked candidates round 1", "evaluate round 1"):
        # a count and an elapsed<remaining (ETA) time, finished at 100%
        assert re.search(rf"{bar}: 100%.* (\d+)/\1 \[\d\d:\d\d<\d\d:\d\d", out), bar
    for stage in ("collect", "segment", "reward", "policy", "evaluate"):
        assert re.search(rf"{stage} done in \d+\.\d s", out), stage
    for chatter in ("FutureWarning", "DeprecationWarning", "LOAD REPORT", "Loading weights",
                    "RLHF_PERSONA_HASH_KEY", "{'loss'"):  # fmt: skip
        assert chatter not in out, chatter


def test_adapter_folder_travels(interrupted_then_resumed, tiny_test_path):
    """The adapter folder alone (plus the base model) serves: tokenizer and chat template beside
    the weights, a portable base reference, and a model card naming segment, persona and data."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _, _ = interrupted_then_resumed
    folder = run_dir / "round_1" / "policy" / "adapters" / "segment_0"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "embedded:tiny-test"  # not the cache path
    card = (folder / "README.md").read_text()
    persona = json.loads((run_dir / "round_1" / "seg" / "segmenter.json").read_text())["cards"]
    persona = next(c["persona_text"] for c in persona if c["segment_id"] == 0)
    assert persona in card and "round 1" in card and "library_name: peft" in card
    manifest = json.loads((run_dir / "round_1" / "policy" / "manifest.json").read_text())
    assert f"{manifest['adapters']['segment_0']['data_size']} training rows" in card
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and (folder / "chat_template.jinja").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_test_path), folder)
    chat = [{"role": "user", "content": "hi"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def _records(rates):
    return [{"round": r, "segments": {"s": {"personalized": {"thumbs_up": t}}}} for r, t in rates]


def test_drift_recovery_counts_rounds_after_the_move():
    from rlhf_persona.evaluation import drift_recovery

    out = drift_recovery(_records(enumerate([0.5, 0.7, 0.3, 0.5, 0.68])), "s", after_round=1)
    assert (out["before"], out["first_after"], out["rounds_to_recover"]) == (0.7, 0.3, 3)
    never = drift_recovery(_records(enumerate([0.5, 0.7, 0.3, 0.4])), "s", after_round=1)
    assert never["rounds_to_recover"] is None


def _eval_record(rates: dict) -> dict:
    """An evaluation record with thumbs-up rates segment → (base, global, personalized)."""
    policies = ("base", "global", "personalized")
    return {
        "segments": {
            seg: {p: {"thumbs_up": t} for p, t in zip(policies, v, strict=True)}
            for seg, v in rates.items()
        }
    }


def test_acceptance_checks_name_what_failed():
    from rlhf_persona.evaluation import acceptance_checks
    from rlhf_persona.simulation import load_population

    pop = load_population("four_segments")  # formal_experts is the 10% minority
    good = {"casual_young": (0.3, 0.5, 0.6), "practical_pros": (0.1, 0.2, 0.3),
            "hobbyists": (0.2, 0.3, 0.4), "formal_experts": (0.4, 0.3, 0.7)}  # fmt: skip
    out = acceptance_checks(_eval_record(good), pop)
    assert out["minority_segment"] == "formal_experts" and out["minority_gain"] == 0.3
    assert all(out["checks"].values())
    short = {**good, "practical_pros": (0.1, 0.2, 0.24)}  # +.14 < +.15
    assert acceptance_checks(_eval_record(short), pop)["checks"] == {
        "personalized_ge_base_plus_0.15": False,
        "personalized_ge_global": True,
        "minority_gain_ge_0.2": True,
    }
    below_global = {**good, "hobbyists": (0.1, 0.45, 0.4)}
    assert not acceptance_checks(_eval_record(below_global), pop)["checks"][
        "personalized_ge_global"
    ]
    weak_minority = {**good, "formal_experts": (0.6, 0.3, 0.79)}
    out = acceptance_checks(_eval_record(weak_minority), pop)
    assert out["minority_gain"] == 0.19 and not out["checks"]["minority_gain_ge_0.2"]


def test_loop_generates_in_the_configured_batches(tmp_path):
    from rlhf_persona.config import load_config
    from rlhf_persona.loop import Loop

    cfg = load_config(_config(tmp_path), ["loop.generation_batch_size=5"])
    loop = Loop(cfg)
    try:
        base = loop._generator(None)
        assert base.batch_size == 5
        assert loop._eval_generator(base.registry).batch_size == 5  # unset: the same size
        loop.cfg.loop.eval_generation_batch_size = 7
        assert loop._eval_generator(base.registry).batch_size == 7
        assert loop._generator(None).batch_size == 5  # collection keeps its own
    finally:
        loop.store.close()


def test_evaluation_diagnostics_use_each_users_first_prompts(interrupted_then_resumed):
    """With ``diagnostic_prompts`` 1 the personalization gap asks the other segments' policies,
    and the KL compares with the base, on each user's first held-out prompt only; base / global /
    personalized answer all."""
    from rlhf_persona.evaluation import eval_items, evaluate_policies, replies_to_generate
    from rlhf_persona.policy import AdapterRegistry, PolicyGenerator
    from rlhf_persona.simulation import load_population

    run_dir, _, _ = interrupted_then_resumed
    users = load_population("two_opposed").sample_users(24, seed=0)
    assign = {u: int(s) for u, s in zip(users.ids, users.truth.segment, strict=True)}
    items = eval_items(users, assign, 2, 3, seed=0)
    n = len(items.prompts)
    first = items.first_prompts(1)
    assert len(first) == n // 3 and (items.prompt_no[first] == 0).all()
    assert {items.user_ids[j] for j in first} == set(items.user_ids)
    assert items.take(first).prompts == [items.prompts[j] for j in first]

    class CountingGenerator(PolicyGenerator):
        rows = kl_rows = 0

        def generate(self, keys, prompts, **kw):
            self.rows += len(keys)
            return super().generate(keys, prompts, **kw)

        def kl_from_base(self, keys, prompts, replies):
            self.kl_rows += len(keys)
            return super().kl_from_base(keys, prompts, replies)

    gen = CountingGenerator(AdapterRegistry.load(run_dir / "round_1" / "policy"))
    assert gen.registry.segments == [0, 1]
    rows, kl_rows = {}, {}
    for k in (1, None):
        gen.rows = gen.kl_rows = 0
        metrics, _ = evaluate_policies(
            users, items, gen, embed=False, max_new_tokens=4, diagnostic_prompts=k
        )
        rows[k], kl_rows[k] = gen.rows, gen.kl_rows
        assert metrics["kl"]["personalized"] >= 0.0
        assert set(metrics["personalization_gap"]) == {"brief_casual", "thorough_formal"}
        assert {v["base"]["n"] for v in metrics["segments"].values()} == {6}  # 2 users x 3
    # each segment's policy answers the other segment's rows: n of them in all, or n / 3
    assert (rows[None], rows[1]) == (3 * n + n, 3 * n + n // 3)
    assert rows == {k: replies_to_generate(items, [0, 1], False, 1, k) for k in (1, None)}
    assert (kl_rows[None], kl_rows[1]) == (2 * n, 2 * n // 3)  # global and personalized


def test_ranked_rows_pair_the_best_and_worst_candidate_of_each_prompt():
    import numpy as np

    from rlhf_persona.loop import ranked_rows

    prompts = ["p0", "p1", "p2"]
    cands = [["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0", "c1", "c2"]]
    # [candidate, prompt]: p0 best c / worst a; p1 all tied (no pair); p2 best a / worst b
    scores = np.array([[0.1, 1.0, 3.0], [0.5, 1.0, -2.0], [2.0, 1.0, 0.0]])
    users = ["u0", "u1", "u2"]
    pairs = ranked_rows(prompts, cands, scores, users, 7, None)
    assert pairs["chosen"] == ["c0", "a2"] and pairs["rejected"] == ["a0", "b2"]
    assert pairs["margin"] == [1.9, 5.0] and pairs["user_id"] == ["u0", "u2"]
    both = ranked_rows(prompts, cands, scores, users, 7, "both")
    assert list(zip(both["completion"], both["label"], strict=True)) == [
        ("c0", True), ("a0", False), ("a2", True), ("b2", False)]  # fmt: skip
    chosen = ranked_rows(prompts, cands, scores, users, 7, "chosen")
    assert chosen["completion"] == ["c0", "a2"] and chosen["label"] == [True, True]
    assert chosen["segment_id"] == [7, 7] and chosen["prompt"] == ["p0", "p2"]
