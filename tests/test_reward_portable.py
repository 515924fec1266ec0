"""Saved reward models travel: a model card always, and for the strategies whose score is the
backbone's one output a plain ``AutoModelForSequenceClassification`` (``hf/``) that scores
exactly like the project's model, loaded with transformers alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_persona.config import RewardConfig
from rlhf_persona.reward import build_reward_model, load_reward_model

ENCODER = "embedded:minilm"
PROMPTS = ["Any tips on cooking?", "How do I start running?", "Explain budgeting to me."]
SHORT = "yeah just start small, it is fun"
LONG = "Certainly. It is advisable to set a clear goal first, and to keep notes on what works."
CARDS = [{"segment_id": 0, "persona_text": "They like short casual replies."},
         {"segment_id": 1, "persona_text": "They like long formal replies."}]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pairs() -> list[dict]:
    rows = []
    for i in range(16):
        seg = i % 2
        good, bad = (SHORT, LONG) if seg == 0 else (LONG, SHORT)
        rows.append({"prompt": PROMPTS[i % 3], "chosen": good, "rejected": bad, "margin": 1.0,
                     "user_id": f"u{i % 4}", "segment_id": seg})  # fmt: skip
    return rows


def _fit(strategy: str, **kw):
    cfg = RewardConfig(strategy=strategy, batch_size=8, max_steps=2, **kw)
    return build_reward_model(cfg, ENCODER, CARDS).fit(_pairs())


def _hf_scores(folder, prompts, replies, personas=None) -> np.ndarray:
    """Scores with transformers alone, following the card: (prompt, reply) pair ids without
    token types, the persona's own ids appended for the prefix strategy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    for j, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        ids = tok(prompt, reply, truncation=True, max_length=128)["input_ids"]
        if personas is not None:
            ids = ids + tok(personas[j], truncation=True, max_length=48)["input_ids"]
        with torch.no_grad():
            out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return np.array(out)


def test_global_reward_model_loads_as_a_plain_classifier(tmp_path):
    rm = _fit("global")  # default speed-ups: cached frozen bottom, [CLS]-only top, k/v deltas
    with torch.no_grad():  # non-zero key/value corrections, so that folding them is tested
        for name, param in rm.model_.named_parameters():
            if "kv_delta" in name:
                param.add_(torch.randn_like(param) * 0.05)
    assert rm.backbone_["cached"] and rm.backbone_["top_kv_frozen"]
    rm.save(tmp_path / "rm")
    replies = [SHORT, LONG, SHORT]
    expected = rm.score([None] * 3, PROMPTS, replies)
    np.testing.assert_allclose(_hf_scores(tmp_path / "rm" / "hf", PROMPTS, replies), expected,
                               atol=1e-4)  # fmt: skip
    card = (tmp_path / "rm" / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card and "16 preference pairs" in card
    np.testing.assert_array_equal(load_reward_model(tmp_path / "rm").score(None, PROMPTS, replies),
                                  expected)  # fmt: skip


def test_uncached_prefix_exports_and_heads_documents_its_loader(tmp_path):
    rm = _fit("prefix", cache_frozen=False, prefix_dropout=0.0)
    rm.save(tmp_path / "prefix")
    segs = [0, 1, 1]
    personas = [CARDS[s]["persona_text"] for s in segs]
    replies = [SHORT, LONG, LONG]
    np.testing.assert_allclose(
        _hf_scores(tmp_path / "prefix" / "hf", PROMPTS, replies, personas),
        rm.score(segs, PROMPTS, replies), atol=1e-4,
    )  # fmt: skip
    assert "They like long formal replies." in (tmp_path / "prefix" / "README.md").read_text()

    heads = _fit("heads")
    heads.save(tmp_path / "heads")
    assert not (tmp_path / "heads" / "hf").exists()
    card = (tmp_path / "heads" / "README.md").read_text()
    assert "load_reward_model" in card and "per-segment parts" in card
