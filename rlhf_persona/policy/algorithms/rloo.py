"""RLOO: online REINFORCE with a leave-one-out baseline, TRL's other PPO-family trainer.

Each step samples ``num_generations`` replies per prompt, scores them with the reward function
(a segment-conditioned reward model via ``reward.make_reward_fn``, or simulated users directly)
and uses each reply's reward minus the mean of the *other* replies to the same prompt as its
advantage. The KL to the reference (base model, adapter off) is folded into the reward with
weight ``beta``. Rows: prompts with their ``segment_id`` (the reward function reads it).
"""

from __future__ import annotations

from pathlib import Path

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.algorithms import ALGORITHMS, Algorithm, GroupSection


class RLOOSection(GroupSection):
    """``policy.rloo``: the keys only the online, grouped algorithms read."""


def format_row(row: dict, tokenizer) -> dict:
    from rlhf_persona.policy.common import online_format_row

    return online_format_row(row, tokenizer)


def train(model, tokenizer, dataset, cfg: PolicyConfig, output_dir: Path, *, device, bf16, seed,
          reward_fn, **_):  # fmt: skip
    from trl import RLOOConfig, RLOOTrainer

    from rlhf_persona.policy.common import train_online

    return train_online(
        RLOOConfig, RLOOTrainer, model, tokenizer, dataset, cfg, output_dir,
        device=device, bf16=bf16, seed=seed, reward_fn=reward_fn,
    )  # fmt: skip


ALGORITHMS.register("rloo", Algorithm("rloo", "online", RLOOSection, ("prompt",), format_row,
                                      train, grouped=True))  # fmt: skip
