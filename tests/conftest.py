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


# Debian's Chromium, headless, with the flags this closed network needs (no background fetches).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Playwright) shared by one test module's page tests."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is missing (scripts/setup.sh installs it)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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
