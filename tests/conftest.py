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
