"""What the terminal is spared: the development-key warning appears once per process and only
when an external id is hashed; library deprecation chatter is filtered, our own is not."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from rlhf_persona.feedback import privacy


@pytest.fixture
def dev_key(monkeypatch):
    monkeypatch.delenv(privacy.HASH_KEY_ENV, raising=False)
    monkeypatch.delenv("RLHF_PERSONA_QUIET_DEV_KEY", raising=False)
    monkeypatch.setattr(privacy, "_warned_dev_key", False)


def test_dev_key_warns_once_and_only_when_an_external_id_is_hashed(dev_key):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hasher = privacy.KeyedHasher()
        hasher.user_id("u_123")  # a tombstone of a pseudonymous id: nothing to protect
        assert not caught
        hasher.pseudonym("ann@example.com")
        privacy.KeyedHasher().external_id("bob@example.com")
    assert [str(w.message) for w in caught if "development key" in str(w.message)] == [
        f"{privacy.HASH_KEY_ENV} is not set: external ids are hashed with the public development "
        "key. Set a secret key in production."
    ]


def test_secret_key_never_warns(dev_key, monkeypatch):
    monkeypatch.setenv(privacy.HASH_KEY_ENV, "s3cret")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        privacy.KeyedHasher().external_id("ann@example.com")
    assert not caught


def test_library_deprecations_are_filtered_but_not_ours():
    code = (
        "import warnings\n"
        "from rlhf_persona.quiet import quiet_libraries\n"
        "quiet_libraries()\n"
        "def warn(text, module):\n"
        "    warnings.warn_explicit(text, FutureWarning, 'x.py', 1, module=module)\n"
        "warn('lib', 'transformers.training_args')\n"
        "warn('ours', 'rlhf_persona.loop')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "ours" in run.stderr and "lib" not in run.stderr
    env = {**os.environ, "RLHF_PERSONA_VERBOSE": "1"}
    verbose = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)  # fmt: skip
    assert "lib" in verbose.stderr
