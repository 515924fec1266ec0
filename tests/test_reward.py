"""Reward models: every strategy trains with TRL's RewardTrainer on the real MiniLM encoder,
saves, reloads and scores identically; conditioning separates opposed segments; bad input is a
clear error. Small simulated data (two_opposed, a small prompt pool) keeps this under ~2 min."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from rlhf_persona.config import RewardConfig, SegmentationConfig
from rlhf_persona.errors import UserError
from rlhf_persona.reward import build_reward_model, load_reward_model, make_reward_fn
from rlhf_persona.reward.evaluate import expected_calibration_error

ENCODER = "embedded:minilm"
STRATEGIES = ("global", "prefix", "heads", "lora")
PROBE_PROMPT = "Any tips on cooking for beginners?"
SHORT_CASUAL = "yeah, just start small lol 😀 🎉!"
LONG_FORMAL = (
    "Certainly. It is advisable to set a clear goal first. Furthermore, one should keep notes on "
    "what works. Moreover, one should allow enough time to learn. Consequently, regarding this, "
    "one should focus on the basics before the details."
)


def small_cfg(strategy: str, **kw) -> RewardConfig:
    base = dict(
        strategy=strategy,
        batch_size=16,
        max_steps=4,
        eval_labels_per_user=12,
        eval_prompts=24,
        eval_replies_per_prompt=4,
        eval_test_pairs_per_user=4,
    )
    return RewardConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These small models gain nothing from a second thread, and contend with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split():
    """two_opposed: 40 users, 12 A/B labels each on a 24-prompt pool, 2 segments fitted."""
    from rlhf_persona.reward.simulate import simulate_split

    return simulate_split(
        "two_opposed", 40, small_cfg("heads"), SegmentationConfig(k=2), seed=0, max_shots=5
    )


@pytest.fixture(scope="module")
def dataset(split):
    return split.preference_dataset()


def casual_and_formal_segments(split) -> tuple[int, int]:
    """Segment ids whose users are mostly brief_casual (true 0) / thorough_formal (true 1)."""
    seg = split.segment_of[split.train_users]
    true = split.users.truth.segment[split.train_users]
    share = {s: (true[seg == s] == 0).mean() for s in np.unique(seg)}
    casual = max(share, key=share.get)
    formal = min(share, key=share.get)
    assert share[casual] > 0.8 and share[formal] < 0.2, "segmentation should find both groups"
    return int(casual), int(formal)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_trains_saves_and_reloads_identically(strategy, split, dataset, tmp_path):
    rm = build_reward_model(small_cfg(strategy), ENCODER, split.cards).fit(dataset)
    assert rm.stats_["steps"] >= 4 and rm.stats_["pairs"] == len(dataset)
    segs = sorted(set(dataset["segment_id"]))
    rows = len(segs) * 2
    prompts = [PROBE_PROMPT] * rows
    replies = [SHORT_CASUAL, LONG_FORMAL] * len(segs)
    ids = [s for s in segs for _ in range(2)]
    before = rm.score(ids, prompts, replies)
    assert before.shape == (rows,) and np.isfinite(before).all()
    rm.save(tmp_path / strategy)
    again = load_reward_model(tmp_path / strategy)
    assert type(again) is type(rm) and again.segments_ == rm.segments_
    np.testing.assert_array_equal(again.score(ids, prompts, replies), before)


def test_heads_ranks_a_reply_differently_for_opposed_segments(split, dataset):
    """After training on two_opposed, the short casual emoji reply wins for the casual segment
    and loses for the formal one — and held-out pairs are predicted well in both."""
    from rlhf_persona.reward.evaluate import evaluate_model

    cfg = small_cfg("heads", max_steps=24, learning_rate=5e-4)
    rm = build_reward_model(cfg, ENCODER, split.cards).fit(dataset)
    casual, formal = casual_and_formal_segments(split)
    r = rm.score(
        [casual, casual, formal, formal], [PROBE_PROMPT] * 4, [SHORT_CASUAL, LONG_FORMAL] * 2
    )
    assert r[0] > r[1] and r[2] < r[3]
    seen = evaluate_model(rm, split)["seen"]
    for name, row in seen["per_segment"].items():
        assert row["acc"] > 0.7, (name, row)
        assert row["pooled"] < 0.65  # a pooled model could not do this on two_opposed


def test_unseen_segment_falls_back_with_a_warning_or_errors(split, dataset, caplog):
    rm = build_reward_model(small_cfg("heads", max_steps=2), ENCODER).fit(dataset)
    with caplog.at_level(logging.WARNING, logger="rlhf_persona.reward"):
        r = rm.score([99], [PROBE_PROMPT], [SHORT_CASUAL])
    assert np.isfinite(r).all()
    assert any("[99] not trained on" in rec.getMessage() for rec in caplog.records)
    # the global part alone: what a segment-less row gets
    assert rm.score([None], [PROBE_PROMPT], [SHORT_CASUAL])[0] == pytest.approx(r[0])
    rm.cfg = rm.cfg.model_copy(update={"unseen_segment": "error"})
    with pytest.raises(UserError, match="99"):
        rm.score([99], [PROBE_PROMPT], [SHORT_CASUAL])


def test_segment_without_pairs_is_a_logged_decision_or_an_error(split, dataset):
    cards = [*split.cards, {"segment_id": 7, "persona_text": "Nobody here yet."}]
    with pytest.raises(UserError, match=r"no pairs for segment\(s\) \[7\]"):
        build_reward_model(small_cfg("heads", unseen_segment="error"), ENCODER, cards).fit(dataset)
    rm = build_reward_model(small_cfg("global"), ENCODER, cards)
    assert rm.conditioned is False  # global never needs segments
    with pytest.raises(UserError, match="needs segment ids"):
        build_reward_model(small_cfg("lora"), ENCODER).fit(
            dataset.map(lambda r: {"segment_id": -1})
        )


@pytest.mark.parametrize("spec", ["/no/such/model", "embedded:nope"])
def test_unloadable_model_spec_is_a_user_error(spec, dataset):
    with pytest.raises(UserError, match="no such folder|unknown|cannot"):
        build_reward_model(small_cfg("global"), spec).fit(dataset)


def test_bad_preference_data_is_a_user_error():
    rm = build_reward_model(small_cfg("global"), ENCODER)
    with pytest.raises(UserError, match="missing column"):
        rm.fit([{"prompt": "p", "chosen": "a"}])
    with pytest.raises(UserError, match="no pairs"):
        rm.fit([])
    with pytest.raises(UserError, match="unknown reward strategy .nope."):
        build_reward_model(RewardConfig.model_construct(strategy="nope"), ENCODER)


def test_reward_fn_reads_segments_and_chat_messages(split, dataset):
    rm = build_reward_model(small_cfg("heads", max_steps=2), ENCODER).fit(dataset)
    casual, formal = casual_and_formal_segments(split)
    fn = make_reward_fn(rm)
    prompts = [
        [{"role": "system", "content": "Be nice."}, {"role": "user", "content": PROBE_PROMPT}]
    ] * 2
    completions = [[{"role": "assistant", "content": SHORT_CASUAL}]] * 2
    got = fn(
        prompts=prompts, completions=completions, segment_id=[casual, formal], trainer_state=None
    )
    want = rm.score([casual, formal], [PROBE_PROMPT] * 2, [SHORT_CASUAL] * 2)
    assert got == pytest.approx(want.tolist()) and all(isinstance(x, float) for x in got)
    with pytest.raises(UserError, match="segment_id"):
        fn(prompts=[PROBE_PROMPT], completions=[SHORT_CASUAL])


def test_minilm_input_keeps_emoji_lines_and_punctuation():
    from rlhf_persona.reward.backbone import load_backbone
    from rlhf_persona.reward.text import InputFormat

    _, tok = load_backbone(ENCODER)
    fmt = InputFormat.for_tokenizer(tok)
    assert fmt.emoji_word and fmt.newline_mark and fmt.text_pair
    ids = fmt.encode(tok, ["Hi?"], ["Great!\n- one 😀\n- two 🎉?"])[0]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens.count(fmt.emoji_word) == 2 and tokens.count("-") == 2
    assert tokens.count("|") == 2 and "!" in tokens and tokens.count("?") == 2
    assert tok.unk_token not in tokens


@pytest.mark.parametrize(("freeze_top_kv", "rank"), [(False, 0), (True, 4)])
def test_frozen_cache_and_first_token_layer_are_exact(freeze_top_kv, rank):
    """The CPU shortcuts change no output: same logits as the plain model, padding included."""
    from rlhf_persona.reward.backbone import load_backbone, prepare_backbone
    from rlhf_persona.reward.text import InputFormat

    torch.manual_seed(0)  # the same fresh reward head in both
    plain, tok = load_backbone(ENCODER)
    torch.manual_seed(0)
    fast, _ = load_backbone(ENCODER)
    info = prepare_backbone(fast, 5, True, tok.cls_token_id, freeze_top_kv, rank)
    assert info["cached"] and info["first_token_top"] and info["top_kv_frozen"] == freeze_top_kv
    ids = InputFormat.for_tokenizer(tok).encode(tok, ["a?", "b"], [SHORT_CASUAL, LONG_FORMAL])
    batch = tok.pad({"input_ids": ids}, return_tensors="pt")
    with torch.no_grad():
        want = plain.eval()(**batch).logits
        got = fast.eval()(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_calibration_error():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert expected_calibration_error(p, p) == 0.0
    assert expected_calibration_error(p, np.array([0.3, 0.3, 0.9, 0.9])) == pytest.approx(0.1)


def test_cli_train_from_simulation_and_errors(tmp_path):
    from typer.testing import CliRunner

    from rlhf_persona.cli import app

    sets = [
        f"run.runs_dir={tmp_path}", "run.name=cli", "tracking.wandb_mode=disabled",
        "population.name=two_opposed", "population.users=30", "segmentation.k=2",
        "reward.strategy=heads", "reward.max_steps=2", "reward.eval_prompts=12",
        "reward.eval_replies_per_prompt=3", "reward.eval_labels_per_user=6",
    ]  # fmt: skip
    args = ["reward", "train", "--source", "simulate"] + [x for s in sets for x in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = load_reward_model(tmp_path / "cli" / "reward" / "heads")
    assert saved.strategy == "heads" and len(saved.segments_) == 2
    bad = CliRunner().invoke(app, ["reward", "eval", "--strategies", "heads,nope"])
    assert isinstance(bad.exception, UserError) and "unknown ['nope']" in str(bad.exception)
