"""Export to TRL's formats: pair construction, deduplication, exclusions, segments, report;
the datasets load with ``datasets`` and train one step of TRL's DPO, KTO and reward trainers."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from datasets import load_dataset
from feedback_helpers import event
from hub_standin import HubStandIn
from typer.testing import CliRunner

from rlhf_persona.cli import app
from rlhf_persona.feedback.export import export_kto, export_preference, export_ratings

P, Q = "What is a good breakfast?", "How do I relax?"
OAT = "Oatmeal with fruit."


@pytest.fixture
def filled(sqlite_store):
    """u1 rates three replies to P and thumbs two replies to Q; u2 makes a pairwise choice on P
    and rates against it; u3 gives no consent; u4 is deleted."""
    s = sqlite_store
    for uid in ("u1", "u2", "u3", "u4"):
        s.upsert_user(uid, {"age_band": "25-34"}, consent=uid != "u3")
    s.record_events([
        event("r1", "u1", "rating", 5, prompt=P, reply="Oatmeal with fruit."),
        event("r2", "u1", "rating", 2, prompt=P, reply="Toast."),
        event("r3", "u1", "rating", 2, prompt=P, reply="Nothing."),
        event("w1", "u1", "pairwise", 1, prompt=P, reply=OAT, other_reply="Toast."),
        event("t1", "u1", "thumbs", 1, prompt=Q, reply="Take a walk."),
        event("t2", "u1", "thumbs", -1, prompt=Q, reply="Work harder."),
        event("t3", "u1", "thumbs", 0, prompt=Q, reply="Sleep."),
        event("p1", "u2", "pairwise", -1, prompt=P, reply=OAT, other_reply="Toast."),
        event("r4", "u2", "rating", 5, prompt=P, reply="Oatmeal with fruit."),
        event("r5", "u2", "rating", 1, prompt=P, reply="Toast."),
        event("t4", "u2", "thumbs", 1, prompt=Q, reply="Take a walk."),
        event("x1", "u3", "thumbs", 1, prompt=Q, reply="Take a walk."),
        event("d1", "u4", "rating", 5, prompt=P, reply="Toast."),
        event("d2", "u4", "rating", 1, prompt=P, reply="Nothing."),
    ])  # fmt: skip
    s.delete_user("u4")
    s.write_segments("run1", [("u1", 3, 0.9)])
    return s


def test_preference_pairs_margins_and_report(filled):
    ds, report = export_preference(filled)
    rows = {(r["user_id"], r["chosen"], r["rejected"]): (r["margin"], r["segment_id"]) for r in ds}
    assert rows == {
        ("u1", "Oatmeal with fruit.", "Toast."): (1.0, 3),  # pairwise first; rating gap = dup
        ("u1", "Oatmeal with fruit.", "Nothing."): (3.0, 3),  # rating gap 5 - 2
        ("u1", "Take a walk.", "Work harder."): (1.0, 3),  # thumbs up vs down, same prompt
    }
    assert ds.column_names == ["prompt", "chosen", "rejected", "margin", "user_id", "segment_id"]
    assert report["rows"] == 3
    assert report["used"] == {"pairwise": 1, "rating_gap": 1, "thumbs_up_vs_down": 1}
    assert report["dropped"] == {
        "duplicate_pair": 1,  # u1's rating gap repeats u1's pairwise choice
        "rating_tie": 1,  # u1 rated Toast and Nothing both 2
        "contradictory_pair": 2,  # u2 chose Toast pairwise but rated Oatmeal higher
        "cleared_thumb": 1,
        "thumb_without_opposite": 1,  # u2 has only a thumbs up on Q
        "no_consent": 1,  # u3
    }
    assert "u4" not in set(ds["user_id"])  # deleted


def test_kto_and_ratings_rows(filled):
    kto, report = export_kto(filled, segments={"u2": 7})
    assert sorted(zip(kto["user_id"], kto["completion"], kto["label"], kto["segment_id"],
                      strict=True)) == [("u1", "Take a walk.", True, -1),
                                        ("u1", "Work harder.", False, -1),
                                        ("u2", "Take a walk.", True, 7)]  # fmt: skip
    assert report["dropped"] == {"cleared_thumb": 1, "no_consent": 1}
    ratings, report = export_ratings(filled)
    assert sorted(zip(ratings["user_id"], ratings["rating"], strict=True)) == [
        ("u1", 2), ("u1", 2), ("u1", 5), ("u2", 1), ("u2", 5)]  # fmt: skip
    assert set(ratings.column_names) == {"prompt", "completion", "rating", "user_id", "segment_id"}


def test_exports_train_trl_trainers(filled, tmp_path):
    """The exported columns are what TRL's trainers take: one real step of each."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        PreTrainedTokenizerFast,
    )
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer
    from trl.data_utils import is_conversational

    pref, _ = export_preference(filled)
    kto, _ = export_kto(filled)
    words = {w for row in pref for k in ("prompt", "chosen", "rejected") for w in
             row[k].replace(".", " . ").replace("?", " ? ").split()}  # fmt: skip
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", "[BOS]", *sorted(words)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                                  eos_token="[EOS]", bos_token="[BOS]")  # fmt: skip
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=2, bos_token_id=3,
    )  # fmt: skip
    common = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                  use_cpu=True, bf16=False, report_to=[], save_strategy="no")  # fmt: skip
    policy = lambda: LlamaForCausalLM(cfg)  # noqa: E731

    def train(trainer) -> float:
        trainer.train()
        return trainer.state.log_history[-1]["train_loss"]

    loss = train(DPOTrainer(model=policy(), ref_model=policy(), args=DPOConfig(**common),
                            train_dataset=pref, processing_class=tok))  # fmt: skip
    assert loss == pytest.approx(0.6931, abs=0.05)  # log(2) at the start of DPO
    train(KTOTrainer(model=policy(), ref_model=policy(), args=KTOConfig(**common),
                     train_dataset=kto, processing_class=tok))  # fmt: skip
    rm = LlamaForSequenceClassification(LlamaConfig(**{**cfg.to_dict(), "num_labels": 1}))
    assert train(RewardTrainer(model=rm, args=RewardConfig(**common), train_dataset=pref,
                               processing_class=tok)) > 0  # fmt: skip
    conv, _ = export_preference(filled, conversational=True)
    assert is_conversational(conv[0]) and not is_conversational(pref[0])


def test_export_cli_writes_dataset_and_prints_counts(filled, tmp_path):
    out = tmp_path / "pref"
    result = CliRunner().invoke(app, ["export", "--db", filled.url, "--format", "preference",
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "preference: 3 rows" in result.output
    assert "contradictory_pair" in result.output and "no_consent" in result.output
    loaded = load_dataset(str(out), split="train")  # a plain folder: train.jsonl + card
    assert len(loaded) == 3 and "margin" in loaded.column_names
    assert (out / "export_report.json").exists()


def test_export_per_segment_parquet_and_card(filled, tmp_path):
    out = tmp_path / "kto"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--db",
            filled.url,
            "--format",
            "kto",
            "--out",
            str(out),
            "--file-format",
            "parquet",
            "--per-segment",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "segment_3" in result.output and "segment_none" in result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == [
        "segment_3/train.parquet", "segment_none/train.parquet", "train.parquet"]  # fmt: skip
    everyone = load_dataset(str(out), split="train")
    seg3 = load_dataset(str(out), "segment_3", split="train")  # a config of the dataset card
    assert set(seg3["segment_id"]) == {3} and set(seg3["user_id"]) == {"u1"}
    alone = load_dataset(str(out / "segment_none"), split="train")  # or a folder on its own
    assert len(seg3) + len(alone) == len(everyone) == 3
    assert everyone.features["label"].dtype == "bool"
    bad = CliRunner().invoke(app, ["export", "--db", filled.url, "--format", "kto", "--out",
                                   str(tmp_path / "x"), "--file-format", "csv"])  # fmt: skip
    assert "--file-format 'csv'" in str(bad.exception)


def _cli_env(**extra: str) -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": repo, "WANDB_MODE": "disabled", **extra}


def test_trl_dpo_cli_trains_on_an_export(filled, tmp_path, tiny_test_path):
    """TRL's own command line reads the export folder as it is (one CPU step, tiny model)."""
    out = tmp_path / "pref"
    assert (
        CliRunner()
        .invoke(
            app,
            [
                "export",
                "--db",
                filled.url,
                "--format",
                "preference",
                "--out",
                str(out),
                "--per-segment",
            ],
        )
        .exit_code
        == 0
    )
    trl = Path(sys.executable).with_name("trl")
    args = [str(trl), "dpo", "--model_name_or_path", str(tiny_test_path), "--dataset_name",
            str(out), "--dataset_config", "segment_3", "--output_dir", str(tmp_path / "dpo"),
            "--use_cpu", "--max_steps", "1", "--bf16", "false", "--report_to", "none",
            "--per_device_train_batch_size", "2", "--save_strategy", "no"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, env=_cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'train_loss': '0.6931'" in done.stdout + done.stderr  # log 2: DPO's first step
    assert (tmp_path / "dpo" / "model.safetensors").is_file()


def test_export_push_to_hub_stand_in(filled, tmp_path):
    """--push-to-hub goes through huggingface_hub's create_repo + upload_folder; a local
    stand-in of the Hub's endpoints receives the files, which load as the dataset."""
    root = tmp_path / "hub"
    with HubStandIn(root) as hub:
        args = [sys.executable, "-m", "rlhf_persona.cli", "export", "--db", filled.url,
                "--format", "preference", "--out", str(tmp_path / "pref"), "--push-to-hub",
                "me/prefs", "--private"]  # fmt: skip
        env = _cli_env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_TOKEN="hf_standin")
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"pushed: {hub.url}/datasets/me/prefs/commit/" in done.stdout
        assert hub.app.state.created == [("dataset", "me/prefs", "private")]
        assert "config_name: default" in hub.app.state.cards[0]
    assert sorted(p.name for p in (root / "me" / "prefs").iterdir()) == [
        "README.md", "export_report.json", "train.jsonl"]  # fmt: skip
    assert len(load_dataset(str(root / "me" / "prefs"), split="train")) == 3


def test_preference_pairs_across_prompts(filled):
    """A user's liked reply against their disliked reply to another prompt, with that prompt
    carried in ``rejected_prompt``; the reward data keeps it for the rejected side."""
    from rlhf_persona.reward.data import pairs_from

    plain, _ = export_preference(filled)
    ds, report = export_preference(filled, across_prompts=True)
    assert ds.column_names[-1] == "rejected_prompt"
    cross = {
        (r["user_id"], r["chosen"], r["rejected"], r["prompt"], r["rejected_prompt"])
        for r in ds
        if r["prompt"] != r["rejected_prompt"]
    }
    assert cross == {
        ("u1", OAT, "Work harder.", P, Q),  # rating 5 on P vs thumbs down on Q
        ("u1", "Take a walk.", "Toast.", Q, P),  # thumbs up on Q vs rating 2 on P
        ("u1", "Take a walk.", "Nothing.", Q, P),
        ("u2", "Take a walk.", "Toast.", Q, P),  # u2's rating 1 on P; u3 (no consent) absent
    }
    assert report["used"]["across_prompts"] == 4
    assert len(ds) == len(plain) + 4  # same-prompt pairs unchanged
    pairs = pairs_from((ds, report))
    row = list(zip(pairs.chosen, pairs.rejected, strict=True)).index(("Take a walk.", "Nothing."))
    assert (pairs.prompts[row], pairs.rejected_prompts[row]) == (Q, P)
    assert pairs.both_prompts()[len(pairs) + row] == P
    assert pairs_from(plain).rejected_prompts == pairs_from(plain).prompts


def test_cli_across_prompts_needs_preference(filled, tmp_path):
    result = CliRunner().invoke(app, ["export", "--format", "kto", "--across-prompts", "--out",
                                      str(tmp_path / "o"), "--db", str(filled.url)])  # fmt: skip
    assert result.exit_code != 0  # the console script turns a UserError into one line, exit 2
    assert "--across-prompts applies to --format preference only" in str(result.exception)


def test_kto_rows_from_ratings(filled):
    """Ratings ≥ 4 are desirable, ≤ 2 undesirable; a rated reply the user also thumbed once
    is one row."""
    kto, report = export_kto(filled, ratings=True)
    rated = sorted((r["user_id"], r["completion"], r["label"]) for r in kto
                   if r["prompt"] == P)  # fmt: skip
    assert rated == [("u1", "Nothing.", False), ("u1", OAT, True), ("u1", "Toast.", False),
                     ("u2", OAT, True), ("u2", "Toast.", False)]  # fmt: skip
    assert report["used"] == {"rating_high": 2, "rating_low": 3, "thumbs_up": 2,
                              "thumbs_down": 1}  # fmt: skip
    assert report["dropped"] == {"cleared_thumb": 1, "no_consent": 1}


def test_since_keeps_only_the_latest_votes(sqlite_store):
    """A window over recent tastes: votes given before ``since`` are dropped (and counted), in
    every format; a vote changed inside the window counts with its new value."""
    s = sqlite_store
    s.upsert_user("u1")
    old, new = "2026-01-01T10:00:00Z", "2026-02-01T10:00:00Z"
    s.record_events([
        event("old-up", "u1", "thumbs", 1, prompt=P, reply=OAT, created_at=old),
        event("old-r", "u1", "rating", 5, prompt=P, reply="Toast.", created_at=old),
        event("changed", "u1", "thumbs", 1, prompt=Q, reply="Sleep.", created_at=old),
        event("new-down", "u1", "thumbs", -1, prompt=Q, reply="Sleep.", created_at=new),
        event("new-r", "u1", "rating", 1, prompt=Q, reply="Work.", created_at=new),
        event("new-up", "u1", "thumbs", 1, prompt=Q, reply="Walk.", created_at=new),
    ])  # fmt: skip
    since = datetime(2026, 1, 15, tzinfo=UTC)
    kto, report = export_kto(s, ratings=True, since=since)
    assert sorted((r["completion"], r["label"]) for r in kto) == [
        ("Sleep.", False), ("Walk.", True), ("Work.", False)]  # fmt: skip
    assert report["dropped"] == {"before_since": 2}
    ratings, report = export_ratings(s, since=since)
    assert [r["completion"] for r in ratings] == ["Work."] and report["dropped"] == {
        "before_since": 1}  # fmt: skip
    pairs, _ = export_preference(s, since=since)
    assert [(r["chosen"], r["rejected"]) for r in pairs] == [("Walk.", "Sleep.")]
    everything, _ = export_kto(s, ratings=True)
    assert len(everything) == 5  # without a window: the two old votes too


def test_export_cli_since(filled, tmp_path):
    out = tmp_path / "o"
    args = ["export", "--format", "kto", "--out", str(out), "--db", str(filled.url)]
    result = CliRunner().invoke(app, [*args, "--since", "2026-01-01T00:00"])
    assert result.exit_code == 0, result.output
    assert load_dataset(str(out), split="train").num_rows > 0
    empty = CliRunner().invoke(app, [*args[:4], str(tmp_path / "e"), *args[5:], "--since",
                                     "2999-01-01"])  # fmt: skip
    assert empty.exit_code != 0 and "before_since" in empty.output
    assert "nothing to export as kto" in str(empty.exception)
    bad = CliRunner().invoke(app, [*args[:4], str(tmp_path / "p"), *args[5:], "--since", "soon"])
    assert bad.exit_code != 0
    assert "--since 'soon': not an ISO 8601 date or time" in str(bad.exception)


def test_kto_rows_from_pairwise_choices(filled):
    """An A/B choice gives a desirable and an undesirable row; a reply the same user also rated
    keeps the rating's label (the choice's rows count as duplicates)."""
    kto, report = export_kto(filled, pairwise=True)
    on_p = sorted((r["user_id"], r["completion"], r["label"]) for r in kto if r["prompt"] == P)
    assert on_p == [("u1", OAT, True), ("u1", "Toast.", False),
                    ("u2", OAT, False), ("u2", "Toast.", True)]  # fmt: skip
    assert report["used"]["pairwise_chosen"] == 2 and report["used"]["pairwise_rejected"] == 2
    with_ratings, report = export_kto(filled, ratings=True, pairwise=True)
    rated = sorted((r["user_id"], r["completion"], r["label"]) for r in with_ratings
                   if r["prompt"] == P)  # fmt: skip
    assert ("u2", OAT, True) in rated and ("u2", OAT, False) not in rated  # the 5 wins
    assert "pairwise_chosen" not in report["used"] and report["dropped"]["duplicate"] >= 4
