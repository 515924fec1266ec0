"""GPU check: the quickstart loop in bf16 on CUDA, with stage times, generation tokens/s, training
steps/s, peak GPU memory and the quickstart's acceptance checks, as one final JSON line.

    python scripts/gpu_check.py                     # embedded:tiny on CUDA, bf16
    python scripts/gpu_check.py --model auto        # smallest causal LM in the local HF cache
    python scripts/gpu_check.py --model Qwen/Qwen2.5-0.5B-Instruct
    python scripts/gpu_check.py --dry-run           # same path on CPU, tiny-test, a tiny loop

Keys: ``device``, ``model``, ``wall_s``, ``stage_s`` (summed over rounds), ``generation``
(``tokens_per_s`` of sampled replies from the base policy, batch ``--gen-batch``),
``training`` (policy adapters: ``steps_per_s`` = optimizer steps / train seconds),
``peak_gpu_mem_gib`` (None on CPU), ``thumbs_up``, ``minority_gain``, ``checks`` (each segment
≥ base + 0.15, personalized ≥ global, minority gain ≥ 0.2) and ``passed``. Exit status 1 when
a check fails on a GPU; the dry run (tiny-test, a few users, one round) reports the checks
without enforcing them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

DRY_RUN = [  # the same loop at toy size: tiny-test, 16 users, one short round
    "models.policy=embedded:tiny-test",
    "population.users=16",
    "segmentation.k=2",
    "segmentation.min_segment_size=3",
    "population.name=two_opposed",
    "reward.max_steps=2",
    "policy.steps=1",
    "policy.batch_size=4",
    "policy.min_rows=1",
    "loop.rounds=1",
    "loop.prompts_per_user=2",
    "loop.max_new_tokens=12",
    "loop.rm_pairs_per_segment=4",
    "loop.rm_candidates=2",
    "loop.eval_users_per_segment=2",
    "loop.eval_prompts_per_user=1",
]


def cached_causal_lm() -> str | None:
    """The smallest causal LM (by safetensors size) in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir().repos
    except Exception:  # no cache folder at all
        return None
    found = []
    for repo in repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            files = {f.file_name: f for f in rev.files}
            config = files.get("config.json")
            if config is None or not any(n.endswith(".safetensors") for n in files):
                continue
            arch = json.loads(Path(config.file_path).read_text()).get("architectures") or [""]
            if arch[0].endswith("ForCausalLM"):
                found.append((rev.size_on_disk, repo.repo_id))
    return min(found)[1] if found else None


def generation_speed(cfg, n: int) -> dict:
    """Tokens/s of ``n`` sampled replies (max_new_tokens each) from the base policy."""
    import torch

    from rlhf_persona.policy import BASE, AdapterRegistry
    from rlhf_persona.policy.backends import make_generator

    m = cfg.models
    with tempfile.TemporaryDirectory() as tmp:
        gen = make_generator(AdapterRegistry(tmp, m.policy), m.generation_backend,
                             device=m.device, bf16=m.bf16, cache_dir=m.cache_dir,
                             batch_size=n, attn_implementation=m.attn_implementation)  # fmt: skip
        prompts = [f"Give me advice on topic {i}." for i in range(n)]
        kw = dict(max_new_tokens=cfg.loop.max_new_tokens, temperature=1.0)
        gen.generate([BASE] * 2, prompts[:2], **kw)  # warm-up (kernels, caches)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        replies = gen.generate([BASE] * n, prompts, seed=1, **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tok = next(iter(gen._backends.values())).tokenizer
        tokens = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies)
    return {"replies": n, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1)}  # fmt: skip


def training_speed(run_dir: Path, rounds: int) -> dict:
    steps = seconds = 0.0
    for r in range(rounds):
        manifest = json.loads((run_dir / f"round_{r}" / "policy" / "manifest.json").read_text())
        for info in manifest["adapters"].values():
            steps += info["steps"]
            seconds += info["train_s"]
    rate = round(steps / seconds, 3) if seconds else None
    return {"adapter_steps": int(steps), "train_s": round(seconds, 2), "steps_per_s": rate}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--model", default=None, help="policy spec; auto = smallest in the HF cache")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny-test, one tiny round")
    ap.add_argument("--gen-batch", type=int, default=64, help="replies in the tokens/s probe")
    ap.add_argument("--runs-dir", default=None, help="where the run folder goes (default: temp)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device; use --dry-run to check the path on CPU"}))
        return 2
    from rlhf_persona.config import load_config
    from rlhf_persona.evaluation import acceptance_checks, run_round_records
    from rlhf_persona.loop import run_loop
    from rlhf_persona.models import resolve_model_path
    from rlhf_persona.simulation import load_population

    device = ["models.device=cpu", "models.bf16=false"] if args.dry_run else [
        "models.device=cuda", "models.bf16=true", "models.torch_threads=null"]  # fmt: skip
    model = args.model
    if model == "auto":
        model = cached_causal_lm() or "embedded:tiny"
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    overrides = ["run.name=gpu_check", f"run.runs_dir={runs_dir}", "tracking.wandb_mode=disabled",
                 *device, *(DRY_RUN if args.dry_run else []),
                 *([f"models.policy={model}"] if model else []), *args.overrides]  # fmt: skip
    cfg = load_config(args.config, overrides)
    resolve_model_path(cfg.models.policy, cfg.models.cache_dir)  # build / find outside the timing
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    if torch.cuda.is_available() and not args.dry_run:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_loop(cfg)
    wall = time.perf_counter() - start
    rounds, stage_s = run_round_records(cfg.run_dir, cfg.loop.rounds)
    out = {
        "device": torch.cuda.get_device_name(0) if cfg.models.device == "cuda" else "cpu",
        "model": cfg.models.policy,
        "algorithm": cfg.policy.algorithm,
        "dry_run": args.dry_run,
        "wall_s": round(wall, 1),
        "stage_s": stage_s,
        "generation": generation_speed(cfg, 8 if args.dry_run else args.gen_batch),
        "training": training_speed(cfg.run_dir, cfg.loop.rounds),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if cfg.models.device == "cuda"
        else None,
        **acceptance_checks(rounds[-1]["eval"], load_population(cfg.population.name)),
    }
    out["passed"] = all(out["checks"].values())
    print(json.dumps(out))
    return 0 if out["passed"] or args.dry_run else 1


if __name__ == "__main__":
    raise SystemExit(main())
