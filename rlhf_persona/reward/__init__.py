"""Segment-conditioned reward models: r(segment, prompt, reply), trained with TRL.

    from rlhf_persona.reward import build_reward_model, load_reward_model, make_reward_fn
    rm = build_reward_model(cfg.reward, cfg.models.encoder, cards).fit(export, run=run)
    rm.score(segment_ids, prompts, replies)          # np.ndarray
    rm.save(path); rm = load_reward_model(path)
    reward_fn = make_reward_fn(rm)                   # for TRL's GRPOTrainer / RLOOTrainer

Strategies (``reward.strategy``): ``global`` (baseline), ``prefix``, ``heads``, ``lora``.
"""

from rlhf_persona.reward import strategies as _strategies  # noqa: F401  (registers them)
from rlhf_persona.reward.data import PairData, pairs_from
from rlhf_persona.reward.model import (
    STRATEGIES,
    RewardModel,
    build_reward_model,
    load_reward_model,
    register,
)
from rlhf_persona.reward.rl import make_reward_fn

__all__ = [
    "STRATEGIES",
    "PairData",
    "RewardModel",
    "build_reward_model",
    "load_reward_model",
    "make_reward_fn",
    "pairs_from",
    "register",
]
