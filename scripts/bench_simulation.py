"""Benchmark the simulator: user sampling, feedback events, reply features (with/without MiniLM).

Prints progress to stderr and one final JSON line on stdout with the keys
``sample_100k_users_s``, ``feedback_events_per_s``, ``features_per_s``,
``features_per_s_with_embedding``, ``peak_rss_mb`` (wall clock), plus context: process CPU
seconds per stage, sizes and the load average (the rates are wall-clock and so drop when other
jobs share the cores).

    .venv/bin/python scripts/bench_simulation.py [--population four_segments] [--embed-pairs 400]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Clock:
    """Wall and process-CPU seconds of the timed calls (CPU time shows the code's own cost on a
    machine shared with other jobs, where wall time also counts waiting for a core)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.cpu[name] = time.process_time() - cpu
        return out, time.perf_counter() - wall


def _corpus_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """(prompt, reply) pairs written by the embedded policy's corpus generator."""
    from rlhf_persona.models.corpus import build_corpus

    examples = build_corpus(n, seed, system_share=0.0)
    prompts = [ex["prompt"][-1]["content"] for ex in examples]
    replies = [ex["completion"][0]["content"] for ex in examples]
    return prompts, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", default="four_segments")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--feature-pairs", type=int, default=20_000)
    parser.add_argument("--embed-pairs", type=int, default=400)
    args = parser.parse_args()

    from rlhf_persona.simulation import FeedbackSimulator, load_population, reply_features
    from rlhf_persona.simulation.features import clear_embedding_cache, embed_texts
    from rlhf_persona.simulation.oracle import reference_pairs

    timed = _Clock()
    pop = load_population(args.population)
    users, t_users = timed("users", lambda: pop.sample_users(100_000, seed=0))
    _log(f"sampled 100,000 users in {t_users:.2f}s")

    # Feedback on precomputed features: each row draws its channel from the user's mix.
    n = args.events
    fa, fb = reference_pairs(n, seed=1)
    idx = np.random.default_rng(0).integers(0, len(users), n)
    prompts = [f"prompt {i % 997}" for i in range(n)]
    replies = [f"reply {i % 1009}" for i in range(n)]
    others = [f"other {i % 1013}" for i in range(n)]
    sim = FeedbackSimulator(users, seed=0, embed=False)
    batch, t_values = timed("values", lambda: sim.respond_features(idx, fa, fb))
    events, t_events = timed("events", lambda: sim.events(batch, prompts, replies, others))
    t_feedback = t_values + t_events
    _log(
        f"{n:,} (user, reply) pairs → {len(events):,} events (abstentions dropped) in "
        f"{t_feedback:.2f}s (values {t_values:.3f}s, event dicts {t_events:.2f}s)"
    )

    p_text, r_text = _corpus_pairs(args.feature_pairs, seed=0)
    interests = [users.interests[i] for i in idx[: len(r_text)]]
    _, t_feat = timed("features", lambda: reply_features(p_text, r_text, interests, embed=False))
    _log(f"features of {len(r_text):,} corpus replies (no embedding) in {t_feat:.2f}s")

    embed_texts(["warm up the encoder"])  # load MiniLM outside the timing
    clear_embedding_cache()
    p_emb, r_emb = _corpus_pairs(args.embed_pairs, seed=1)
    _, t_emb = timed(
        "embedding", lambda: reply_features(p_emb, r_emb, interests[: len(r_emb)], embed=True)
    )
    _log(f"features of {len(r_emb):,} new replies with MiniLM relevance in {t_emb:.2f}s")

    result = {
        "sample_100k_users_s": round(t_users, 3),
        "feedback_events_per_s": round(n / t_feedback),
        "feedback_values_per_s": round(n / t_values),
        "features_per_s": round(len(r_text) / t_feat),
        "features_per_s_with_embedding": round(len(r_emb) / t_emb, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_s": {k: round(v, 3) for k, v in timed.cpu.items()},
        "feedback_events_per_cpu_s": round(n / (timed.cpu["values"] + timed.cpu["events"])),
        "events": n,
        "feature_pairs": len(r_text),
        "embed_pairs": len(r_emb),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
