"""scripts/gpu_check.sh --dry-run: the GPU check's whole path (loop, probes, checks) on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_reports_every_figure(tmp_path, tiny_test_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--runs-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["model"] == "embedded:tiny-test" and out["dry_run"]
    assert set(out["stage_s"]) == {"collect", "segment", "reward", "policy", "evaluate"}
    assert out["generation"]["tokens"] > 0 and out["generation"]["tokens_per_s"] > 0
    assert out["training"]["adapter_steps"] > 0 and out["training"]["steps_per_s"] > 0
    assert out["peak_gpu_mem_gib"] is None
    assert set(out["checks"]) == {
        "personalized_ge_base_plus_0.15",
        "personalized_ge_global",
        "minority_gain_ge_0.2",
    }
    assert out["passed"] == all(out["checks"].values())
    assert (tmp_path / "gpu_check" / "round_0" / "round.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_gpu_check_without_a_gpu_says_so():
    """Without --dry-run on a machine without CUDA: a clear message and exit status 2."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout


def test_model_auto_finds_nothing_in_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    assert module.cached_causal_lm() is None
