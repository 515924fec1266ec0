"""PPO: online policy optimisation with a learned value function (clipped surrogate, GAE, KL).

One reply per prompt is sampled, scored by the reward function, and a value head on the policy's
last hidden state is the baseline (GRPO / RLOO use a group's mean reward instead). The trainer,
built from accelerate, peft and TRL parts (TRL 1.13 removed its own), is ``policy/ppo_trainer.py``.
Rows: prompts with their ``segment_id`` (the reward function reads it).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.algorithms import ALGORITHMS, Algorithm, RolloutSection


class PPOSection(RolloutSection):
    """``policy.ppo``: the keys only PPO reads."""

    clip_range: float = Field(
        0.2, gt=0, description="Clip range of the probability ratio and of the value."
    )
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount per reply token.")
    gae_lambda: float = Field(
        0.95, ge=0, le=1, description="GAE λ (1: Monte-Carlo returns, 0: one-step TD)."
    )


def format_row(row: dict, tokenizer) -> dict:
    from rlhf_persona.policy.common import online_format_row

    return online_format_row(row, tokenizer)


def train(model, tokenizer, dataset, cfg: PolicyConfig, output_dir: Path, *, device, bf16, seed,
          reward_fn, **_):  # fmt: skip
    from rlhf_persona.policy.ppo_trainer import PPOTrainer

    trainer = PPOTrainer(model, tokenizer, dataset, cfg, device=device, bf16=bf16, seed=seed,
                         reward_fn=reward_fn)  # fmt: skip
    return trainer.train()


ALGORITHMS.register("ppo", Algorithm("ppo", "online", PPOSection, ("prompt",), format_row, train))
