"""Every shipped experiment config validates, and names only known keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_persona.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "dpo", "kto", "grpo", "rloo", "ppo", "gpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path):
    cfg = load_config(path)
    if path.stem in ("dpo", "kto", "grpo", "rloo", "ppo"):
        assert cfg.policy.algorithm == path.stem
    if path.stem == "gpu":
        assert cfg.models.bf16 and cfg.models.device == "cuda"
        assert not cfg.models.policy.startswith("embedded:")
