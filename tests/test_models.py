"""Embedded models: the synthetic corpus, the tiny-test policy build (cache, determinism,
concurrency), reloading through plain Auto* classes, MiniLM embeddings, spec errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlhf_persona.errors import UserError
from rlhf_persona.models import (
    EMBEDDED_SPECS,
    build,
    load_causal_lm,
    load_encoder,
    model_info,
    resolve_model_path,
)
from rlhf_persona.models.build import build_embedded
from rlhf_persona.models.corpus import (
    AXIS_LEVELS,
    STYLE_DESCRIPTIONS,
    build_corpus,
    describe_style,
)
from rlhf_persona.styles import BULLET_PREFIX, EMOJI, STYLE_AXES, TOPICS

# --- corpus ---------------------------------------------------------------------------------


def _reply(example: dict) -> str:
    return example["completion"][0]["content"]


def test_corpus_is_deterministic_and_seeded():
    assert build_corpus(50, seed=3) == build_corpus(50, seed=3)
    assert build_corpus(50, seed=3) != build_corpus(50, seed=4)


def test_corpus_styles_vary_independently():
    corpus = build_corpus(3000, seed=0)
    assert tuple(AXIS_LEVELS) == STYLE_AXES
    for axis, levels in AXIS_LEVELS.items():
        counts = Counter(ex["style"][axis] for ex in corpus)
        assert set(counts) == set(levels), axis
    # Independence: every pair of levels of every two axes co-occurs about as often as chance.
    for a in AXIS_LEVELS:
        for b in AXIS_LEVELS:
            if a >= b:
                continue
            pairs = Counter((ex["style"][a], ex["style"][b]) for ex in corpus)
            expected = len(corpus) / (len(AXIS_LEVELS[a]) * len(AXIS_LEVELS[b]))
            assert min(pairs.values()) > 0.6 * expected, (a, b, pairs)


def test_corpus_replies_show_their_style():
    keywords = [kw for kws in TOPICS.values() for kw in kws]
    kw_re = re.compile(r"\b(" + "|".join(map(re.escape, keywords)) + r")\b")
    for ex in build_corpus(800, seed=1):
        style, reply = ex["style"], _reply(ex)
        n_emoji = sum(reply.count(e) for e in EMOJI)
        assert n_emoji == {"none": 0, "one": 1}.get(style["emoji"], n_emoji), reply
        assert (n_emoji >= 2) == (style["emoji"] == "several"), reply
        assert (f"\n{BULLET_PREFIX}" in "\n" + reply) == (style["structure"] == "bullets"), reply
        assert reply.rstrip().endswith("?") == (style["question"] == "yes"), reply
        assert ("!" in reply) == (style["enthusiasm"] == "high"), reply
        assert bool(kw_re.search(reply)) == (style["detail"] == "specific"), reply
    words = {lvl: [] for lvl in AXIS_LEVELS["length"]}
    for ex in build_corpus(600, seed=2):
        words[ex["style"]["length"]].append(len(_reply(ex).split()))
    means = [sum(w) / len(w) for w in words.values()]
    assert means[0] < means[1] < means[2]


def test_corpus_system_messages_describe_the_style():
    corpus = build_corpus(2000, seed=0)
    with_system = [ex for ex in corpus if ex["prompt"][0]["role"] == "system"]
    assert 0.25 < len(with_system) / len(corpus) < 0.35
    for ex in with_system[:200]:
        text = ex["prompt"][0]["content"].lower()
        for axis, phrases in STYLE_DESCRIPTIONS.items():
            wrong = [p for level, p in phrases.items() if level != ex["style"][axis] and p in text]
            assert not wrong, (text, ex["style"])
        assert sum(p[ex["style"][a]] in text for a, p in STYLE_DESCRIPTIONS.items()) >= 2
    assert describe_style({"length": "short", "formality": "casual", "question": "yes"}) == (
        "Keep it short, be casual, and end with a question."
    )
    with pytest.raises(ValueError, match="formality"):
        describe_style({"formality": "posh"})


# --- the tiny-test policy ---------------------------------------------------------------------


def test_tiny_test_reloads_through_auto_classes_and_generates(tiny_test_path: Path, single_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_test_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_test_path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 1_500_000 < model.num_parameters() < 3_000_000
    assert tok.eos_token == "<|end|>" and tok.pad_token_id != tok.eos_token_id
    # TRL splits prompt from completion by prefix: the rendered prompt must be a prefix.
    prompt = [{"role": "user", "content": "Any tips on garlic for cooking?"}]
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(
        prompt + [{"role": "assistant", "content": "Yes."}], tokenize=False
    )
    assert full.startswith(head) and full[len(head) :] == "Yes.<|end|>\n"
    assert tok.decode(tok("Hey 😀 🎉 garlic!")["input_ids"]) == "Hey 😀 🎉 garlic!"

    ids = tok(head, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=160, do_sample=False)
    reply_ids = out[0, ids["input_ids"].shape[1] :].tolist()
    reply = tok.decode(reply_ids, skip_special_tokens=True)
    assert len(reply.split()) >= 3
    assert tok.eos_token_id in reply_ids, "greedy reply should end its turn"


def test_second_build_is_a_cache_hit(tiny_test_path: Path, model_cache: Path):
    stamp = (tiny_test_path / "model.safetensors").stat().st_mtime_ns
    again = build("embedded:tiny-test", model_cache)
    assert again.cache_hit and again.path == tiny_test_path
    assert again.seconds < 1.0
    assert (tiny_test_path / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model_path("embedded:tiny-test") == tiny_test_path  # default cache from env


# The real build path with a short SFT on a small corpus (part of the recipe: own folders).
QUICK = {"steps": 2, "corpus_size": 256}


def test_same_seed_gives_byte_identical_weights(tmp_path: Path):
    import torch

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = build_embedded("tiny-test", tmp_path / "a", **QUICK)
    assert torch.equal(torch.rand(3), expected), "a build must not disturb the caller's RNG"
    b = build_embedded("tiny-test", tmp_path / "b", **QUICK)
    c = build_embedded("tiny-test", tmp_path / "c", **QUICK, seed=1)
    assert not a.cache_hit and not b.cache_hit and a.path.name == b.path.name != c.path.name
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes(), name
    assert (a.path / "model.safetensors").read_bytes() != (
        c.path / "model.safetensors"
    ).read_bytes()


def test_two_processes_building_at_once_share_one_build(tmp_path: Path):
    code = (
        "import json, sys; from pathlib import Path;"
        "from rlhf_persona.models.build import build_embedded;"
        f"r = build_embedded('tiny-test', Path(sys.argv[1]), **{QUICK!r});"
        "print(json.dumps({'hit': r.cache_hit, 'path': str(r.path)}))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["hit"] for r in results) == [False, True]  # exactly one process built
    assert results[0]["path"] == results[1]["path"]
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [
        Path(results[0]["path"]).name  # no half-built temporary folder is left behind
    ]


def test_sampled_replies_vary_along_every_axis(tiny_test_path: Path, single_thread):
    from rlhf_persona.models.sampling import sample_replies

    model, tok = load_causal_lm(str(tiny_test_path))
    prompts = ["Can you help me with garlic?", "Give me advice on fitness."]
    replies = sample_replies(model, tok, prompts, n=16, max_new_tokens=96, seed=0)
    replies = [r for rs in replies for r in rs]
    checks = {
        "emoji": lambda r: any(e in r for e in EMOJI),
        "structure": lambda r: any(ln.startswith(BULLET_PREFIX) for ln in r.splitlines()),
        "question": lambda r: r.rstrip().endswith("?"),
        "enthusiasm": lambda r: "!" in r,
        "length": lambda r: len(r.split()) > 25,
    }
    for axis, has in checks.items():
        share = sum(map(has, replies)) / len(replies)
        assert 0.05 < share < 0.95, (axis, share)


# --- MiniLM and specs -------------------------------------------------------------------------


def test_minilm_loads_and_embeds_similar_sentences_closer():
    from rlhf_persona.models.embedding import embed_texts

    model, tok = load_encoder("embedded:minilm")
    assert type(model).__name__ == "BertModel"
    vecs = embed_texts(
        model,
        tok,
        ["How do I cook pasta?", "What is a good pasta recipe?", "My tenant broke the lease."],
    )
    assert vecs.shape == (3, 384)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    info = model_info("embedded:minilm")
    assert 22_000_000 < info["parameters"] < 23_000_000 and info["size_mb"] > 80


def test_unknown_embedded_spec_lists_valid_ones():
    with pytest.raises(UserError) as err:
        resolve_model_path("embedded:xyz")
    for spec in EMBEDDED_SPECS:
        assert spec in str(err.value)
    with pytest.raises(UserError, match="not built by the project"):
        build("embedded:minilm")


def test_unloadable_hub_id_or_path_is_named(tmp_path: Path):
    with pytest.raises(UserError, match="no-such-org/no-such-model"):
        load_causal_lm("no-such-org/no-such-model")
    with pytest.raises(UserError, match="no such folder"):
        load_encoder(str(tmp_path / "missing"))


def test_cli_build_and_show(tiny_test_path: Path):
    from typer.testing import CliRunner

    from rlhf_persona.cli import app

    result = CliRunner().invoke(app, ["models", "show", "embedded:tiny-test"])
    assert result.exit_code == 0, result.output
    assert str(tiny_test_path) in result.output.replace("\n", "")
    assert "parameters:" in result.output and "LlamaForCausalLM" in result.output
    built = CliRunner().invoke(app, ["models", "build", "embedded:tiny-test"])
    assert built.exit_code == 0 and "hit" in built.output, built.output
    bad = CliRunner().invoke(app, ["models", "show", "embedded:nope"])
    assert isinstance(bad.exception, UserError)
