"""GRPO: online policy optimisation, TRL's PPO-family trainer without a value network.

Each step samples ``num_generations`` replies per prompt from the current policy, scores them
with the reward function (a segment-conditioned reward model via ``reward.make_reward_fn``, or
simulated users directly), and uses each reply's reward minus its group's mean as the advantage
in PPO's clipped surrogate; ``num_iterations`` > 1 reuses a rollout for several clipped updates
and ``beta`` > 0 adds the KL to the reference (the base model, adapter off).
Rows: prompts with their ``segment_id`` (the reward function reads it).
"""

from __future__ import annotations

from pathlib import Path

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.algorithms import ALGORITHMS, Algorithm, GroupSection


class GRPOSection(GroupSection):
    """``policy.grpo``: the keys only the online, grouped algorithms read."""


def format_row(row: dict, tokenizer) -> dict:
    from rlhf_persona.policy.common import online_format_row

    return online_format_row(row, tokenizer)


def train(model, tokenizer, dataset, cfg: PolicyConfig, output_dir: Path, *, device, bf16, seed,
          reward_fn, **_):  # fmt: skip
    from trl import GRPOConfig, GRPOTrainer

    from rlhf_persona.policy.common import train_online

    return train_online(
        GRPOConfig, GRPOTrainer, model, tokenizer, dataset, cfg, output_dir,
        device=device, bf16=bf16, seed=seed, reward_fn=reward_fn,
    )  # fmt: skip


ALGORITHMS.register("grpo", Algorithm("grpo", "online", GRPOSection, ("prompt",), format_row,
                                      train, grouped=True))  # fmt: skip
