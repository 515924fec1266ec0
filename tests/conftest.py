"""Shared fixtures. Embedded models are built once per machine into RLHF_PERSONA_CACHE."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No network in tests: hub look-ups fail fast instead of hanging; W&B stays quiet and offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RLHF_PERSONA_CACHE", str(REPO / ".cache" / "rlhf_persona"))


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """The embedded-model cache the whole test session shares."""
    return Path(os.environ["RLHF_PERSONA_CACHE"])


@pytest.fixture(scope="session")
def tiny_test_path(model_cache: Path) -> Path:
    """Folder of the built ``embedded:tiny-test`` policy (built on first use, then cached)."""
    from rlhf_persona.models import build

    return build("embedded:tiny-test", model_cache).path


@pytest.fixture
def single_thread():
    """Run a test's torch work on one thread (restored after).

    For the tiny models, extra threads only add synchronisation: on this shared 2-core machine
    sampling 32 replies from tiny-test took 4 s on one thread and 53 s on two.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
