"""Importers of other tools' formats (TRL / HF datasets, OpenAI-style messages, Argilla, Label
Studio, score dumps), the round trip of the project's own exports, and the CSV value options."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from feedback_helpers import HASH_KEY, event
from typer.testing import CliRunner

from rlhf_persona.cli import app
from rlhf_persona.feedback import importers
from rlhf_persona.feedback.export import export_kto, export_preference, export_ratings
from rlhf_persona.feedback.import_formats import import_records
from rlhf_persona.feedback.importers import import_csv, parse_mapping, value_mapping
from rlhf_persona.feedback.store import FeedbackStore

P, Q = "What is a good breakfast?", "How do I relax?"


def _events(store, kind=None):
    return sorted((e["user_id"], e["kind"], e["prompt"], e["reply"], e.get("other_reply"),
                   e["value"]) for e in store.events(kind))  # fmt: skip


@pytest.fixture
def source(sqlite_store):
    s = sqlite_store
    s.record_events([
        event("r1", "u1", "rating", 5, prompt=P, reply="Oatmeal."),
        event("r2", "u1", "rating", 2, prompt=P, reply="Toast."),
        event("t1", "u1", "thumbs", 1, prompt=Q, reply="Take a walk."),
        event("t2", "u1", "thumbs", -1, prompt=Q, reply="Work harder."),
        event("p1", "u2", "pairwise", -1, prompt=P, reply="Oatmeal.", other_reply="Toast."),
    ], create_users=True)  # fmt: skip
    s.write_segments("run1", [("u1", 3, 0.9)])
    return s


def _pairs(ds):
    return sorted((r["user_id"], str(r["prompt"]), str(r["chosen"]), str(r["rejected"]))
                  for r in ds)  # fmt: skip


def test_exports_reimport_round_trip(source, tmp_path):
    """What `export` writes (jsonl, parquet, conversational, across prompts) `import --format
    trl` reads back into another store, whose exports hold the same rows."""
    runner = CliRunner()
    folders = {}
    options = {"pref": ["--format", "preference"],
               "kto": ["--format", "kto", "--file-format", "parquet"],
               "ratings": ["--format", "ratings", "--conversational"],
               "cross": ["--format", "preference", "--across-prompts"]}  # fmt: skip
    for name, extra in options.items():
        folders[name] = tmp_path / name
        result = runner.invoke(app, ["export", "--db", source.url, "--out", str(folders[name]),
                                     *extra])  # fmt: skip
        assert result.exit_code == 0, result.output
    with FeedbackStore(tmp_path / "copy.db", hash_key=HASH_KEY) as copy:
        for name in ("pref", "kto", "ratings"):
            report = import_records(copy, folders[name], "trl")
            assert report.bad_rows == [] and report.events["created"] > 0, name
        assert _pairs(export_preference(copy)[0]) == _pairs(export_preference(source)[0])
        kto = [sorted(export_kto(s)[0]["completion"]) for s in (copy, source)]
        assert kto[0] == kto[1]
        assert sorted(export_ratings(copy)[0]["rating"]) == [2, 5]
        assert import_records(copy, folders["pref"], "trl").events == Counter(duplicate=3)
        # a pair across prompts comes back as the thumbs up and down it was made from
        cross = import_records(copy, folders["cross"], "trl")
        assert cross.bad_rows == [] and cross.events["created"] == 2


def test_two_folders_of_the_same_name_import_their_own_rows(tmp_path):
    """datasets caches a local folder whose card names its files (as `export` writes it) under
    the folder's name: without a fresh build the second "export" folder would import the first
    one's rows."""
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n" \
           "    path: train.jsonl\n---\n"  # fmt: skip
    for run, reply in (("a", "Oatmeal."), ("b", "Toast.")):
        folder = tmp_path / run / "export"
        folder.mkdir(parents=True)
        row = {"prompt": P, "completion": reply, "label": True, "user_id": "u1"}
        (folder / "train.jsonl").write_text(json.dumps(row) + "\n")
        (folder / "README.md").write_text(card)
        with FeedbackStore(tmp_path / f"{run}.db", hash_key=HASH_KEY) as store:
            import_records(store, folder, "trl")
            assert [e["reply"] for e in store.events()] == [reply]


def test_trl_conversational_and_implicit_prompt(sqlite_store, tmp_path):
    rows = [
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No."}]},
        {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
         "completion": [{"role": "assistant", "content": "Hey."}], "label": False,
         "user_id": "u7"},
        {"prompt": "Hi", "text": "?"},
    ]  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    report = import_records(sqlite_store, path, "trl", default_user="anon")
    assert [line for line, _ in report.bad_rows] == [3]
    assert _events(sqlite_store) == [("anon", "pairwise", "Hi", "Hello!", "No.", 1),
                                     ("u7", "thumbs", "Hi", "Hey.", None, -1)]  # fmt: skip


MESSAGES = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}], "feedback": {"thumb": "up"},
     "user": "alice"},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey."},
                  {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}],
     "rating": 2, "metadata": {"user_id": "bob"}},
    {"input": {"messages": [{"role": "user", "content": "Hi"}]},
     "preferred_output": [{"role": "assistant", "content": "Hello!"}],
     "non_preferred_output": [{"role": "assistant", "content": "Go away."}], "user_id": "u9"},
    {"messages": [{"role": "user", "content": "Hi"}]},
]  # fmt: skip


def test_openai_messages_with_feedback(sqlite_store, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in MESSAGES) + "\n{oops\n")
    report = import_records(sqlite_store, path, "messages")
    assert [line for line, _ in report.bad_rows] == [4, 5]
    alice, bob = (sqlite_store.hasher.pseudonym(x) for x in ("alice", "bob"))
    assert _events(sqlite_store) == sorted([
        (alice, "thumbs", "Hi", "Hello!", None, 1),  # the system message is left out
        (bob, "rating", "user: Hi\nassistant: Hey.\nuser: Bye", "Ciao", None, 2),
        ("u9", "pairwise", "Hi", "Hello!", "Go away.", 1),
    ])  # fmt: skip
    assert report.users == 3
    assert import_records(sqlite_store, path, "messages").events == Counter(duplicate=3)


def test_argilla_flat_and_nested_records(sqlite_store, tmp_path):
    records = [
        {"id": "r1", "prompt": P, "response": "Oatmeal.",
         "quality.responses": [4, 2], "quality.responses.users": ["a", "b"],
         "quality.responses.status": ["submitted", "submitted"],
         "ok.responses": ["good"], "ok.responses.users": ["a"], "ok.responses.status": ["draft"],
         "note.responses": ["tasty"], "note.responses.users": ["a"]},
        {"fields": {"prompt": Q, "response-1": "Walk.", "response-2": "Work."},
         "responses": {"rank": [{"user_id": "b", "status": "submitted",
                                 "value": [{"value": "response-2", "rank": 1},
                                           {"value": "response-1", "rank": 2}]}]}},
        {"prompt": P, "response": "Toast.", "ok": [{"user_id": "c", "value": "bad"}]},  # v1
    ]  # fmt: skip
    path = tmp_path / "argilla.json"
    path.write_text(json.dumps(records))
    report = import_records(sqlite_store, path, "argilla")
    assert report.bad_rows == []
    a, b, c = (sqlite_store.hasher.pseudonym(x) for x in "abc")
    assert _events(sqlite_store) == sorted([
        (a, "rating", P, "Oatmeal.", None, 4), (b, "rating", P, "Oatmeal.", None, 2),
        (b, "pairwise", Q, "Work.", "Walk.", 1), (c, "thumbs", P, "Toast.", None, -1),
    ])  # fmt: skip
    with FeedbackStore(tmp_path / "q.db", hash_key=HASH_KEY) as only:  # --question quality
        report = import_records(only, path, "argilla", questions=["quality"])
        assert report.skipped["other question"] == 2 and len(only.events()) == 2


def test_label_studio_json_export(sqlite_store, tmp_path):
    tasks = [
        {"id": 1, "data": {"prompt": Q, "answer1": "Walk.", "answer2": "Work."},
         "annotations": [
             {"completed_by": {"id": 7, "email": "ann@x.org"}, "created_at": "2026-01-02T10:00:00Z",
              "result": [{"type": "pairwise", "to_name": "answer1,answer2",
                          "value": {"selected": "right"}}]},
             {"completed_by": 8, "was_cancelled": True,
              "result": [{"type": "pairwise", "to_name": "answer1,answer2",
                          "value": {"selected": "left"}}]}]},
        {"id": 2, "data": {"prompt": P, "response": "Toast."},
         "annotations": [{"completed_by": 7, "result": [
             {"type": "rating", "to_name": "response", "value": {"rating": 8}},
             {"type": "choices", "to_name": "response", "value": {"choices": ["Bad"]}}]}]},
        {"id": 3, "data": {"text": "?"}, "annotations": []},
    ]  # fmt: skip
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(tasks))
    report = import_records(sqlite_store, path, "label-studio",
                            values=value_mapping(rating_scale="1,10"))  # fmt: skip
    assert [line for line, _ in report.bad_rows] == [3]
    ann, seven = (sqlite_store.hasher.pseudonym(f"label-studio:{x}") for x in ("ann@x.org", 7))
    assert _events(sqlite_store) == sorted([
        (ann, "pairwise", Q, "Walk.", "Work.", -1),  # "right" won; the cancelled one is left out
        (seven, "rating", P, "Toast.", None, 4),  # 8 on 1..10 -> 4.1 -> 4
        (seven, "thumbs", P, "Toast.", None, -1),
    ])  # fmt: skip


def test_score_dumps_thumbs_and_ratings(sqlite_store, tmp_path):
    rows = [
        {"name": "user-feedback", "value": 1, "userId": "alice", "input": "Hi",
         "output": "Hello!", "comment": "nice", "timestamp": "2026-01-03T10:00:00Z"},
        {"name": "user-feedback", "value": 0, "userId": "bob",
         "input": [{"role": "user", "content": "Hi"}],
         "output": {"role": "assistant", "content": "Go away."}},
        {"key": "stars", "score": 5, "inputs": "Hi", "outputs": "Hello!", "user_id": "u9"},
        {"key": "stars", "score": 1, "inputs": "Hi", "outputs": "Hey."},
        {"name": "user-feedback", "value": 1, "userId": "carol"},
    ]  # fmt: skip
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    report = import_records(sqlite_store, path, "scores", default_user="anon")
    assert [line for line, _ in report.bad_rows] == [5]
    alice, bob = (sqlite_store.hasher.pseudonym(x) for x in ("alice", "bob"))
    assert _events(sqlite_store) == sorted([
        (alice, "thumbs", "Hi", "Hello!", None, 1), (bob, "thumbs", "Hi", "Go away.", None, -1),
        ("u9", "rating", "Hi", "Hello!", None, 5), ("anon", "rating", "Hi", "Hey.", None, 1),
    ])  # fmt: skip
    assert [e["comment"] for e in sqlite_store.events("thumbs") if e["comment"]] == ["nice"]
    with FeedbackStore(tmp_path / "q.db", hash_key=HASH_KEY) as only:  # --question stars
        report = import_records(only, path, "scores", questions=["stars"])
        assert report.skipped["other question"] == 3 and report.bad_rows == []
        assert sorted(e["value"] for e in only.events()) == [1, 5]


CSV_VALUES = """who,answer,liked,stars
ann,Oatmeal.,1,1
ann,Toast.,0,4
ben,Toast.,0,5
"""


def test_csv_value_mapping_and_prompt_option(sqlite_store, tmp_path, monkeypatch):
    path = tmp_path / "v.csv"
    path.write_text(CSV_VALUES)
    thumbs = parse_mapping(["who=user_id", "answer=reply", "liked=thumb"])
    monkeypatch.setattr(importers, "BATCH", 1)  # a user in several batches is counted once
    report = import_csv(sqlite_store, path, thumbs, default_prompt=P)
    assert report.users == 2 and "--thumb-values 1,0" in report.warnings[0]
    assert Counter(e["value"] for e in sqlite_store.events("thumbs")) == Counter({1: 1, 0: 2})
    assert {e["prompt"] for e in sqlite_store.events()} == {P}  # --prompt with a reply column
    report = import_csv(sqlite_store, path, thumbs, default_prompt=P,
                        values=value_mapping(thumb_values="1,0"))  # fmt: skip
    assert report.warnings == [] and report.events["updated"] == 2
    assert Counter(e["value"] for e in sqlite_store.events("thumbs")) == Counter({1: 1, -1: 2})
    stars = parse_mapping(["who=user_id", "answer=reply", "stars=rating"])
    import_csv(sqlite_store, path, stars, default_prompt=Q, values=value_mapping(reverse=True))
    assert sorted(e["value"] for e in sqlite_store.events("rating")) == [1, 2, 5]  # 6 - stars
    with pytest.raises(importers.UserError, match="--thumb-values"):
        value_mapping(thumb_values="1")


def test_csv_pairwise_columns(sqlite_store, tmp_path):
    path = tmp_path / "ab.csv"
    path.write_text("who,q,a,b,winner,good,bad\n"
                    "ann,Hi,Hello!,Go away.,B,Hello!,Go away.\n"
                    "ben,Hi,Hello!,Go away.,tie,Hello!,Hello!\n")  # fmt: skip
    ab = ["who=user_id", "q=prompt", "a=reply", "b=other_reply", "winner=choice"]
    report = import_csv(sqlite_store, path, parse_mapping(ab))
    assert [line for line, _ in report.bad_rows] == [3] and "choice" in report.bad_rows[0][1]
    ann = sqlite_store.hasher.pseudonym("ann")
    assert _events(sqlite_store) == [(ann, "pairwise", "Hi", "Hello!", "Go away.", -1)]
    pairs = import_csv(
        sqlite_store,
        path,
        parse_mapping(["who=user_id", "q=prompt", "good=chosen", "bad=rejected"]),
    )
    assert pairs.events["updated"] == 1  # ann's chosen/rejected pair turns her A/B vote round
    assert [line for line, _ in pairs.bad_rows] == [3]  # a reply against itself


def test_failed_import_leaves_no_database(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("who,answer,stars\nann,Toast.,eleven\n")
    db = tmp_path / "new.db"
    args = ["import", "--db", str(db), "--format", "csv", str(bad), "--map", "who=user_id",
            "--map", "answer=reply"]  # fmt: skip
    result = CliRunner().invoke(app, args)  # no rating or thumb column: refused
    assert result.exit_code != 0 and "rating or thumb" in str(result.exception)
    assert list(tmp_path.iterdir()) == [bad]
    result = CliRunner().invoke(app, [*args, "--map", "stars=rating"])  # every row is bad
    assert "nothing imported" in str(result.exception) and "line 2:" in result.output
    assert list(tmp_path.iterdir()) == [bad]
    result = CliRunner().invoke(app, ["import", "--db", str(db), "--format", "messages",
                                      str(tmp_path / "none.jsonl")])  # fmt: skip
    assert "no such file" in str(result.exception) and not db.exists()
