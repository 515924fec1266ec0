"""The command line around a store: --version, read commands on a missing SQLite file, an
unreachable PostgreSQL, the README's chat-link example, `policy train` from a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from feedback_helpers import HASH_KEY, event
from typer.testing import CliRunner

from rlhf_persona import __version__
from rlhf_persona.cli import app
from rlhf_persona.feedback.store import FeedbackStore
from rlhf_persona.serving.tokens import token_key, verify_token

REPO = Path(__file__).resolve().parents[2]


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"rlhf-persona {__version__}"


@pytest.mark.parametrize("command", [
    ["export", "--format", "kto", "--out", "o"],
    ["segment", "fit"],
    ["chat-link", "alice"],
    ["reward", "personal"],
    ["keys", "list"],
    ["policy", "train", str(REPO / "configs" / "quickstart.yaml")],
])  # fmt: skip
def test_read_commands_on_a_missing_sqlite_file_create_nothing(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "sub" / "nope.db"
    result = CliRunner().invoke(app, [*command, "--db", str(missing)])
    assert result.exit_code != 0
    assert f"{missing}: no feedback database there" in str(result.exception)
    assert list(tmp_path.iterdir()) == []  # no file, no folder


def test_unreachable_postgres_is_one_line(tmp_path):
    """Through the console script's entry point: one line naming the URL, exit 2."""
    url = "postgresql://me:secret@127.0.0.1:9/feedback"  # port 9 (discard): refused
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLHF_PERSONA_QUIET_DEV_KEY": "1"}
    done = subprocess.run([sys.executable, "-m", "rlhf_persona.cli", "export", "--db", url,
                           "--format", "kto", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert "cannot open the database postgresql://me:***@127.0.0.1:9/feedback" in lines[0]
    assert "secret" not in lines[0] and "Traceback" not in done.stderr


def test_readme_chat_link_example(tmp_path, monkeypatch):
    """`chat-link alice --db feedback.db` after the README's CSV import: alice is found by her
    external id (stored as a keyed hash) and the token names her store id."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLHF_PERSONA_HASH_KEY", HASH_KEY)
    Path("ratings.csv").write_text("rater,question,answer,score\nalice,Hi?,Hello!,5\n")
    runner = CliRunner()
    imported = runner.invoke(app, ["import", "--db", "feedback.db", "--format", "csv",
                                   "ratings.csv", "--map", "rater=user_id", "--map",
                                   "question=prompt", "--map", "answer=reply", "--map",
                                   "score=rating"])  # fmt: skip
    assert imported.exit_code == 0, imported.output
    result = runner.invoke(app, ["chat-link", "alice", "--db", "feedback.db", "--base-url",
                                 "http://127.0.0.1:8000"])  # fmt: skip
    assert result.exit_code == 0, result.output
    link = result.output.strip()
    assert link.startswith("http://127.0.0.1:8000/chat?token=v1.")
    with FeedbackStore("feedback.db", hash_key=HASH_KEY) as store:
        alice = store.hasher.pseudonym("alice")
    assert verify_token(token_key(None, HASH_KEY), link.split("token=")[1]).user_id == alice
    unknown = runner.invoke(app, ["chat-link", "bob", "--db", "feedback.db"])
    assert unknown.exit_code != 0 and "no user 'bob'" in str(unknown.exception)


def test_policy_train_from_a_store(tmp_path, tiny_test_path, single_thread):
    """One round of policies from a store without the loop: the global adapter plus one per
    segment with enough rows, in a registry `serve --policy-registry` loads."""
    from rlhf_persona.policy import AdapterRegistry

    db = tmp_path / "f.db"
    with FeedbackStore(db, hash_key=HASH_KEY) as store:
        events = [event(f"e{seg}{i}", f"u{seg}", "pairwise", 1, prompt=f"Question {i}?",
                        reply=f"Answer {i} for {seg}.", other_reply=f"No {i}.")
                  for seg in (0, 1) for i in range(4)]  # fmt: skip
        store.record_events(events[:6], create_users=True)  # segment 1 gets 2 rows: no adapter
        store.write_segments("r", [("u0", 0, 1.0), ("u1", 1, 1.0)])
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "run": {"name": "p", "runs_dir": str(tmp_path / "runs")},
        "models": {"policy": "embedded:tiny-test", "device": "cpu"},
        "policy": {"algorithm": "dpo", "steps": 1, "batch_size": 2, "max_length": 32},
    }))  # fmt: skip
    result = CliRunner().invoke(app, ["policy", "train", str(config), "--db", str(db)])
    assert result.exit_code == 0, result.output
    registry = AdapterRegistry.load(tmp_path / "runs" / "p" / "policy")
    assert {n: i.data_size for n, i in registry.adapters.items()} == {"global": 6, "segment_0": 4}
    assert "registry:" in result.output
    online = CliRunner().invoke(app, ["policy", "train", str(config), "--db", str(db), "--set",
                                      "policy.algorithm=grpo"])  # fmt: skip
    assert "pass --reward DIR" in str(online.exception)
