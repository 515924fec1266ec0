"""Benchmark the embedded models: fresh build time, CPU generation speed, memory, style spread.

Prints progress lines, then one final JSON line with the keys
``build_s_tiny``, ``build_s_tiny_test`` (fresh builds in a temporary cache),
``gen_tok_s_b1``, ``gen_tok_s_b32`` (new tokens per second, sampling with embedded:tiny on CPU;
``*_1thread`` variants: on one thread), ``peak_rss_mb`` (this process), and
``feature_spread``: the standard deviation of each reply feature over 64 sampled replies of
embedded:tiny to the same prompts (each must be > 0).

Usage: python scripts/bench_models.py [--cache-dir DIR]  (default: a fresh temporary folder)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPTS = [
    "Can you help me with garlic?",
    "Any tips on budget for finance?",
    "What should I know about watering?",
    "Give me advice on music.",
]
INTERESTS = ["cooking", "finance", "gardening", "music"]  # the topics of PROMPTS


def _text_features(prompts: list[str], replies: list[str]) -> tuple[list[str], list[list[float]]]:
    """Simple text measures of each style axis (used when the simulator's features are absent)."""
    from rlhf_persona.styles import (
        BULLET_PREFIX,
        CASUAL_MARKERS,
        EMOJI,
        ENTHUSIASTIC_MARKERS,
        FORMAL_MARKERS,
        TOPICS,
    )

    def count(words, text):
        return sum(len(re.findall(rf"\b{re.escape(w)}\b", text)) for w in words)

    rows = []
    for prompt, reply in zip(prompts, replies, strict=True):
        low = reply.lower()
        topic = next(
            (
                t
                for t, kws in TOPICS.items()
                if t in prompt.lower() or any(k in prompt.lower() for k in kws)
            ),
            None,
        )
        rows.append(
            [
                len(reply.split()),
                sum(reply.count(e) for e in EMOJI),
                count(FORMAL_MARKERS, low) - count(CASUAL_MARKERS, low),
                reply.count("!") + count(ENTHUSIASTIC_MARKERS, low),
                sum(line.startswith(BULLET_PREFIX) for line in reply.splitlines()),
                float(reply.rstrip().endswith("?")),
                count(TOPICS[topic], low) if topic else 0,
            ]
        )
    names = ["length", "emoji", "formality", "enthusiasm", "structure", "question", "detail"]
    return names, rows


def reply_feature_matrix(prompts, replies):
    try:  # the simulator's own features, once they exist, are what the later stages reward
        from rlhf_persona.simulation.features import FEATURE_NAMES, reply_features

        # interest_match needs a user's interests: a user interested in the prompts' topics.
        interests = [INTERESTS] * len(replies)
        rows = reply_features(prompts, replies, interests).tolist()
        return list(FEATURE_NAMES), rows, "simulation"
    except ImportError:
        names, rows = _text_features(prompts, replies)
        return names, rows, "text"


def gen_tokens_per_s(model, tok, batch: int, max_new_tokens: int = 64, repeats: int = 2) -> float:
    import torch

    from rlhf_persona.models.sampling import chat_prompts

    tok.padding_side = "left"
    texts = (chat_prompts(tok, PROMPTS) * batch)[:batch]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    total, seconds = 0, 0.0
    for i in range(repeats):
        torch.manual_seed(i)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc, do_sample=True, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id
            )
        seconds += time.perf_counter() - start
        new = out[:, enc["input_ids"].shape[1] :]
        total += int((new != tok.pad_token_id).sum())  # tokens up to and including each EOS
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    import numpy as np
    import torch

    from rlhf_persona.models import build, load_causal_lm
    from rlhf_persona.models.sampling import sample_replies

    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench_models_"))
    result: dict = {"torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]}
    for spec, key in (
        ("embedded:tiny-test", "build_s_tiny_test"),
        ("embedded:tiny", "build_s_tiny"),
    ):
        built = build(spec, cache)
        result[key] = round(built.seconds, 1)
        result[f"cache_hit_{key.removeprefix('build_s_')}"] = built.cache_hit  # False = fresh
        result[f"params_{key.removeprefix('build_s_')}"] = built.parameters
        print(f"{spec}: {built.seconds:.1f} s (cache hit: {built.cache_hit})", file=sys.stderr)

    model, tok = load_causal_lm("embedded:tiny", cache, device="cpu")
    result["gen_tok_s_b1"] = round(gen_tokens_per_s(model, tok, 1), 1)
    result["gen_tok_s_b32"] = round(gen_tokens_per_s(model, tok, 32), 1)
    # Tiny matrices gain little from threads, and on a loaded machine extra threads cost a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result["gen_tok_s_b1_1thread"] = round(gen_tokens_per_s(model, tok, 1), 1)
    result["gen_tok_s_b32_1thread"] = round(gen_tokens_per_s(model, tok, 32), 1)
    torch.set_num_threads(threads)

    replies = [r for rs in sample_replies(model, tok, PROMPTS, n=16, seed=0) for r in rs]
    prompts = [p for p in PROMPTS for _ in range(16)]
    names, rows, source = reply_feature_matrix(prompts, replies)
    spread = np.asarray(rows, dtype=float).std(axis=0)
    result["feature_spread"] = {n: round(float(s), 3) for n, s in zip(names, spread, strict=True)}
    result["feature_source"] = source
    result["all_features_vary"] = bool((spread > 0).all())
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for reply in replies[:4]:
        print("sample:", reply.replace("\n", " / "), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
