"""Feasibility benchmark: how many DPO steps until sampled replies clearly shift style?

Preference pairs are written by the embedded corpus generator: for each prompt one random style,
``chosen`` in its short + several-emoji variant and ``rejected`` in its long + no-emoji variant,
every other style axis equal (``--contrast emoji``: the emoji axis only). One LoRA adapter is
trained with DPO per step budget (from the base each time); replies sampled on held-out prompts
are compared with the base policy's by emoji count and word count. Final JSON line:

    {"model", "parameters", "pairs", "contrast", "beta", "load_avg",
     "results": [{"steps", "train_wall_s", "train_cpu_s", "emoji_mean", "emoji_share",
                  "words_mean", "reward_accuracy", "sample"}, ...]}

``--compare ppo,grpo,rloo`` instead trains each online algorithm for ``--online-steps`` steps of
``--batch-size`` sampled replies against a planted reward (emoji count minus length / 40, the
taste of a "short + emoji" segment) and compares, on held-out prompts, the reward gained over the
base policy per training wall second and the KL from the base. Final JSON line:

    {"model", "compare": [{"algorithm", "train_wall_s", "reward_base", "reward",
                           "reward_gain_per_s", "kl_from_base"}, ...], "load_avg"}

Usage: python scripts/bench_policy.py [--model embedded:tiny] [--steps 0,10,20,40]
       python scripts/bench_policy.py --compare ppo,grpo,rloo [--online-steps 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import tempfile
import time

import torch
from datasets import Dataset

from rlhf_persona.config import PolicyConfig
from rlhf_persona.models import model_info
from rlhf_persona.models.corpus import Style, make_prompt, make_reply
from rlhf_persona.policy import BASE, AdapterRegistry, PolicyGenerator, train_policies
from rlhf_persona.styles import EMOJI

# chosen vs rejected style levels; every other axis is drawn at random, equal on both sides.
CONTRASTS = {
    "short_emoji": ({"length": "short", "emoji": "several"}, {"length": "long", "emoji": "none"}),
    "emoji": ({"emoji": "several"}, {"emoji": "none"}),
}


def pairs(n: int, seed: int, contrast: str) -> Dataset:
    rng = random.Random(seed)
    likes, dislikes = CONTRASTS[contrast]
    rows = []
    for _ in range(n):
        prompt, topic, kw = make_prompt(rng)
        style = Style.sample(rng)
        liked = dataclasses.replace(style, **likes)
        disliked = dataclasses.replace(style, **dislikes)
        rows.append(
            {
                "prompt": prompt,
                "chosen": make_reply(liked, topic, kw, rng),
                "rejected": make_reply(disliked, topic, kw, rng),
                "segment_id": 0,
            }
        )
    return Dataset.from_list(rows)


def style_stats(replies: list[str]) -> dict:
    emoji = [sum(r.count(e) for e in EMOJI) for r in replies]
    words = [len(r.split()) for r in replies]
    return {
        "emoji_mean": round(sum(emoji) / len(emoji), 3),
        "emoji_share": round(sum(e > 0 for e in emoji) / len(emoji), 3),
        "words_mean": round(sum(words) / len(words), 2),
    }


def planted_reward(prompts, completions, segment_id, **_) -> list[float]:
    """A "short + emoji" taste: +1 per emoji, -1 per 40 characters."""
    return [sum(c.count(e) for e in EMOJI) - len(c) / 40 for c in completions]


def compare(args, prompts: list[str]) -> list[dict]:
    """Each online algorithm against the planted reward: gain per wall second, KL from base."""
    rng = random.Random(2)
    data = Dataset.from_list([{"prompt": make_prompt(rng)[0], "segment_id": 0} for _ in range(64)])
    keys, gen = [0] * len(prompts), dict(max_new_tokens=args.max_new_tokens, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        base = PolicyGenerator(AdapterRegistry(tmp, args.model))
        base_replies = base.generate([BASE] * len(prompts), prompts, **gen)
        reward_base = sum(planted_reward(prompts, base_replies, keys)) / len(prompts)
        results = []
        for algorithm in args.compare.split(","):
            cfg = PolicyConfig(
                algorithm=algorithm,
                steps=args.online_steps,
                learning_rate=args.learning_rate,
                batch_size=args.batch_size,
                beta=args.beta,
                train_global=False,
                **{algorithm: {"max_completion_length": args.max_new_tokens}},
            )
            start = time.perf_counter()
            registry = train_policies(
                cfg, args.model, data, {}, f"{tmp}/{algorithm}", reward_fn=planted_reward
            )
            wall = time.perf_counter() - start
            generator = PolicyGenerator(registry)
            replies = generator.generate(keys, prompts, **gen)
            reward = sum(planted_reward(prompts, replies, keys)) / len(prompts)
            row = {
                "algorithm": algorithm,
                "train_wall_s": round(wall, 1),
                "reward_base": round(reward_base, 3),
                "reward": round(reward, 3),
                "reward_gain_per_s": round((reward - reward_base) / wall, 4),
                "kl_from_base": round(
                    float(generator.kl_from_base(keys, prompts, replies).mean()), 3
                ),
                "sample": replies[0],
            }
            print(row, flush=True)
            results.append(row)
    return results


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:tiny")
    ap.add_argument("--steps", default="0,10,20,40")
    ap.add_argument("--contrast", choices=sorted(CONTRASTS), default="short_emoji")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--eval-prompts", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=PolicyConfig().learning_rate)
    ap.add_argument("--batch-size", type=int, default=PolicyConfig().batch_size)
    ap.add_argument("--beta", type=float, default=PolicyConfig().beta)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: best for tiny models)"
    )
    ap.add_argument("--compare", default="", help="online algorithms to compare, e.g. ppo,grpo")
    ap.add_argument("--online-steps", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = random.Random(1)
    prompts = [make_prompt(rng)[0] for _ in range(args.eval_prompts)]
    if args.compare:
        out = {"model": args.model, "steps": args.online_steps, "batch_size": args.batch_size,
               "learning_rate": args.learning_rate, "beta": args.beta}  # fmt: skip
        out["compare"] = compare(args, prompts)
        out["load_avg"] = round(os.getloadavg()[0], 2)
        print(json.dumps(out, ensure_ascii=False))
        return
    data = pairs(args.pairs, seed=0, contrast=args.contrast)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in [int(s) for s in args.steps.split(",")]:
            start_wall, start_cpu = time.perf_counter(), cpu_s()
            if steps == 0:
                registry = AdapterRegistry(tmp, args.model)
                key, metrics = BASE, {}
            else:
                cfg = PolicyConfig(
                    steps=steps,
                    learning_rate=args.learning_rate,
                    batch_size=args.batch_size,
                    beta=args.beta,
                    train_global=False,
                )
                registry = train_policies(cfg, args.model, data, {}, f"{tmp}/s{steps}")
                key, metrics = 0, registry.adapters["segment_0"].metrics
            train_wall, train_cpu = time.perf_counter() - start_wall, cpu_s() - start_cpu
            replies = PolicyGenerator(registry).generate(
                [key] * len(prompts), prompts, max_new_tokens=args.max_new_tokens, seed=0
            )
            row = {
                "steps": steps,
                "train_wall_s": round(train_wall, 1),
                "train_cpu_s": round(train_cpu, 1),
                **style_stats(replies),
                "reward_accuracy": metrics.get("rewards/accuracies"),
                "sample": replies[0],
            }
            print(row, flush=True)
            results.append(row)
    print(
        json.dumps(
            {
                "model": args.model,
                "parameters": model_info(args.model).get("parameters"),
                "pairs": args.pairs,
                "contrast": args.contrast,
                "beta": args.beta,
                "learning_rate": args.learning_rate,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "load_avg": round(os.getloadavg()[0], 2),
                "results": results,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
