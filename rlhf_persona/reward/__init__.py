"""Segment-conditioned reward models: r(segment, prompt, reply), trained with TRL.

    from rlhf_persona.reward import build_reward_model, load_reward_model, make_reward_fn
    rm = build_reward_model(cfg.reward, cfg.models.encoder, cards).fit(export, run=run)
    rm.score(segment_ids, prompts, replies)          # np.ndarray
    rm.save(path); rm = load_reward_model(path)
    rm = load(path)            # any saved kind: RewardModel, UserLevelReward, FeatureReward
    reward_fn = make_reward_fn(rm)                   # for TRL's GRPOTrainer / RLOOTrainer

Strategies (``reward.strategy``): ``global`` (baseline), ``prefix``, ``heads``, ``lora``.
Exports load lazily, so importing the package (e.g. for the CLI) does not import torch.
"""

from importlib import import_module

from rlhf_persona.registry import Registry

# Reward strategies by name (``@register(name)`` adds one): both ``build_reward_model``'s lookup
# and ``reward.strategy``'s validation read it; the built-in four load on first lookup.
STRATEGIES = Registry("reward strategy", builtin=("global", "prefix", "heads", "lora"),
                      module="rlhf_persona.reward.strategies")  # fmt: skip

_EXPORTS = {
    "RewardModel": "rlhf_persona.reward.model",
    "build_reward_model": "rlhf_persona.reward.model",
    "load_reward_model": "rlhf_persona.reward.model",
    "register": "rlhf_persona.reward.model",
    "PairData": "rlhf_persona.reward.data",
    "pairs_from": "rlhf_persona.reward.data",
    "make_reward_fn": "rlhf_persona.reward.rl",
    **dict.fromkeys(("load", "reward_kind", "REWARD_FILES"), "rlhf_persona.reward.saved"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlhf_persona.reward' has no attribute {name!r}")
    import_module("rlhf_persona.reward.strategies")  # registers the strategies
    return getattr(import_module(_EXPORTS[name]), name)
