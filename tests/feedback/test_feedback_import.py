"""Importers: Polis exports (real data), CSV with a column mapping, JSON lines; bad rows with
line numbers; idempotent re-imports; deleted users stay out of re-imports."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhf_persona.cli import app
from rlhf_persona.errors import UserError
from rlhf_persona.feedback.importers import import_csv, import_jsonl, import_polis, parse_mapping

# the shared data folder beside the checkout (or beside the folder of its git worktrees)
POLIS = next(
    (
        p / "shared" / "data" / "polis"
        for p in Path(__file__).resolve().parents[3:5]
        if (p / "shared" / "data" / "polis").is_dir()
    ),
    Path("shared/data/polis"),
)


def _polis_truth(folder: Path) -> dict:
    """Counts straight from the export's own files."""
    with (folder / "summary.csv").open() as handle:
        summary = {row[0]: row[1] for row in csv.reader(handle) if len(row) >= 2}
    with (folder / "participants-votes.csv").open() as handle:
        people = list(csv.DictReader(handle))
    with (folder / "votes.csv").open() as handle:
        vote_rows = sum(1 for _ in handle) - 1
    return {
        "participants": int(summary["voters"]),
        "people": people,
        "agree": sum(int(p["n-agree"]) for p in people),
        "disagree": sum(int(p["n-disagree"]) for p in people),
        "votes": sum(int(p["n-votes"]) for p in people),
        "vote_rows": vote_rows,
    }


@pytest.mark.parametrize("conversation", ["15-per-hour-seattle", "brexit-consensus"])
def test_polis_import_matches_the_export_counts(sqlite_store, conversation):
    folder = POLIS / conversation
    truth = _polis_truth(folder)
    report = import_polis(sqlite_store, folder)
    assert report.users == truth["participants"] == len(truth["people"])
    assert len(sqlite_store.users()) == truth["participants"]
    values = Counter(e["value"] for e in sqlite_store.events("thumbs"))
    # current value per (participant, statement) = Polis's own participant x statement matrix
    assert values[1] == truth["agree"] and values[-1] == truth["disagree"]
    assert sum(values.values()) == truth["votes"]  # passes are kept as abstentions (0)
    # every vote row is in the history; re-votes updated the current value
    assert sqlite_store.counts()["events"] == truth["vote_rows"] == report.rows
    assert report.events["updated"] == truth["vote_rows"] - truth["votes"]
    # Polis's opinion groups are kept as side data, not as profile features
    groups = Counter(u["meta"]["polis_group_id"] for u in sqlite_store.users())
    assert groups == Counter(int(p["group-id"]) if p["group-id"] else None
                             for p in truth["people"])  # fmt: skip
    assert all(u["profile"] == {} for u in sqlite_store.users())
    again = import_polis(sqlite_store, folder)
    assert dict(again.events) == {"duplicate": truth["vote_rows"]}


def test_polis_matrix_only_folder(sqlite_store, tmp_path):
    """A folder with only participants-votes.csv: every filled cell is a current vote; the
    statements are placeholders; the report counts each participant once."""
    folder = tmp_path / "brexit-consensus"
    folder.mkdir()
    shutil.copy(POLIS / folder.name / "participants-votes.csv", folder)
    truth = _polis_truth(POLIS / folder.name)
    report = import_polis(sqlite_store, folder)
    assert report.users == truth["participants"] and report.bad_rows == []
    values = Counter(e["value"] for e in sqlite_store.events("thumbs"))
    assert (values[1], values[-1]) == (truth["agree"], truth["disagree"])
    assert sum(values.values()) == truth["votes"] == report.rows
    replies = {e["reply"] for e in sqlite_store.events("thumbs")}
    assert "Polis statement 0" in replies
    assert import_polis(sqlite_store, folder).events == Counter(duplicate=truth["votes"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no votes.csv or participants-votes.csv"):
        import_polis(sqlite_store, empty)


def test_polis_import_on_postgres_and_tombstone_on_reimport(store):
    folder = POLIS / "15-per-hour-seattle"
    import_polis(store, folder)
    truth = _polis_truth(folder)
    values = Counter(e["value"] for e in store.events("thumbs"))
    assert (values[1], values[-1]) == (truth["agree"], truth["disagree"])
    victim = store.users()[0]["user_id"]
    n_votes = len(store.events(user_id=victim, history=True))
    store.delete_user(victim)
    report = import_polis(store, folder)
    assert report.users == truth["participants"] - 1
    assert report.skipped["deleted user"] >= n_votes > 0
    assert victim not in {u["user_id"] for u in store.users()}
    assert store.events(user_id=victim) == []


CSV_TEXT = """rater,question,answer,score,age,job,interests,note
alice,What is a good breakfast?,Oatmeal.,5,25-34,nurse,tech;music,"Great, mail me at a@b.org"
alice,What is a good breakfast?,Toast.,2,,,,
bob,What is a good breakfast?,Oatmeal.,five,65+,retired,,
,What is a good breakfast?,Toast.,3,,,,
carol,"What is a
good breakfast?",Eggs.,4,18-24,student,gaming,
bob,What is a good breakfast?,Toast.,7,,,,
bob,What is a good breakfast?,Eggs.,1,65+,retired,,
"""
CSV_MAP = ["rater=user_id", "question=prompt", "answer=reply", "score=rating",
           "age=profile.age_band", "job=profile.occupation", "interests=profile.interests",
           "note=comment"]  # fmt: skip


def test_csv_import_with_mapping_reports_bad_rows_by_line(sqlite_store, tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(CSV_TEXT)
    report = import_csv(sqlite_store, path, parse_mapping(CSV_MAP))
    assert report.rows == 7
    assert [line for line, _ in report.bad_rows] == [4, 5, 8]  # "five", no user, rating 7
    reasons = dict(report.bad_rows)
    assert "rating" in reasons[4] and "user_id" in reasons[5]
    assert "outside the scale 1..5" in reasons[8]
    assert report.events["created"] == 4
    users = {u["user_id"]: u["profile"] for u in sqlite_store.users()}
    alice = sqlite_store.hasher.pseudonym("alice")
    bob = sqlite_store.hasher.pseudonym("bob")
    assert users[alice] == {"age_band": "25-34", "occupation": "nurse",
                            "interests": ["tech", "music"]}  # fmt: skip
    # a bad row contributes nothing: bob's profile comes only from his valid row (line 9)
    assert users[bob] == {"age_band": "65+", "occupation": "retired"}
    comments = [e["comment"] for e in sqlite_store.events("rating") if e["comment"]]
    assert comments == ["Great, mail me at [email]"]
    again = import_csv(sqlite_store, path, parse_mapping(CSV_MAP))
    assert dict(again.events) == {"duplicate": 4}  # derived event ids: re-import is a no-op
    # deletion holds across a re-import of the same file
    sqlite_store.delete_user(alice)
    third = import_csv(sqlite_store, path, parse_mapping(CSV_MAP))
    assert third.skipped["deleted user"] == 2
    assert alice not in {u["user_id"] for u in sqlite_store.users()}


def test_csv_mapping_errors_name_the_column_and_file(sqlite_store, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(CSV_TEXT)
    with pytest.raises(UserError, match="unknown field 'stars'"):
        parse_mapping(["score=stars"])
    with pytest.raises(UserError, match=r"r\.csv: no column 'grade'"):
        import_csv(sqlite_store, path, parse_mapping(["grade=rating", "rater=user_id"]))
    with pytest.raises(UserError, match="rating or thumb"):
        import_csv(sqlite_store, path, parse_mapping(["rater=user_id", "answer=reply"]))


def test_jsonl_import_users_events_and_bad_lines(sqlite_store, tmp_path):
    lines = [
        json.dumps({"user_id": "j1", "profile": {"age_band": "35-44"}}),
        json.dumps({"event_id": "j-e1", "user_id": "j1", "kind": "thumbs", "prompt": "Hi",
                    "reply": "Hello!", "value": 1}),
        "{not json",
        json.dumps({"event_id": "j-e2", "user_id": "j2", "kind": "rating", "prompt": "Hi",
                    "reply": "Hello!", "value": 0}),
        "",
        json.dumps({"event_id": "j-e3", "user_id": "j2", "kind": "pairwise", "prompt": "Hi",
                    "reply": "Hello!", "other_reply": "Hey.", "value": -1,
                    "created_at": "2026-01-01T10:00:00Z"}),
        json.dumps([1, 2]),
    ]  # fmt: skip
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = import_jsonl(sqlite_store, path)
    assert [line for line, _ in report.bad_rows] == [3, 4, 7]
    assert "value" in dict(report.bad_rows)[4]
    # users: j1 (its line) and j2 (created by its event): each written user counts once
    assert report.users == 2 and dict(report.events) == {"created": 2}
    assert sqlite_store.get_user("j1")["profile"] == {"age_band": "35-44"}
    assert {e["event_id"] for e in sqlite_store.events()} == {"j-e1", "j-e3"}
    # what the store exports as events can be imported again (round trip)
    exported = tmp_path / "back.jsonl"
    exported.write_text("\n".join(json.dumps(e) for e in sqlite_store.events()))
    assert dict(import_jsonl(sqlite_store, exported).events) == {"duplicate": 2}


def test_import_cli(sqlite_store, tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(CSV_TEXT)
    args = ["import", "--db", sqlite_store.url, "--format", "csv", str(path)]
    for item in CSV_MAP:
        args += ["--map", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "7 rows" in result.output and "created" in result.output
    assert "line 4:" in result.output and "line 8:" in result.output
    bad = CliRunner().invoke(app, ["import", "--db", sqlite_store.url, "--format", "xml",
                                   str(path)])  # fmt: skip
    assert bad.exit_code != 0 and "xml" in str(bad.exception)
