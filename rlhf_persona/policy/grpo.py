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

from trl import GRPOConfig, GRPOTrainer

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.common import (
    chat_prompt,
    lora_config,
    run_trainer,
    trainer_args,
    trl_reward_func,
)

COLUMNS = ("prompt",)


def format_row(row: dict, tokenizer) -> dict:
    # segment_id (and user_id, for per-user reward terms) reach the reward function as kwargs.
    out = {"prompt": chat_prompt(tokenizer, row["prompt"], row.get("system"))}
    out.update({k: row[k] for k in ("segment_id", "user_id") if k in row})
    return out


def train(
    model,
    tokenizer,
    dataset,
    cfg: PolicyConfig,
    output_dir: Path,
    *,
    device,
    bf16,
    seed,
    reward_fn,
    **_,
) -> GRPOTrainer:
    args = GRPOConfig(
        **trainer_args(cfg, output_dir, device, bf16, seed),
        beta=cfg.beta,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        num_iterations=cfg.num_iterations,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=trl_reward_func(reward_fn),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model),
    )
    return run_trainer(trainer)
