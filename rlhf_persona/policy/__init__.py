"""Per-segment policies: DPO / KTO offline, GRPO / RLOO / PPO online, LoRA adapters or personas.

- ``train_policies(policy_cfg, base_spec, data, cards, out_dir, reward_fn=None, run=None,
  round=0)`` trains the global baseline and the configured strategy's adapters → registry.
- ``AdapterRegistry`` (``registry.py``): adapters per segment + manifest; ``AdapterRegistry.load``.
- ``PolicyGenerator(registry).generate(keys, prompts)``: grouped, batched generation; also
  ``logprobs`` and ``kl_from_base`` for evaluation.

One module per algorithm (``sft``, ``dpo``, ``kto``, ``grpo``, ``rloo``: thin layers over TRL's
trainers; ``ppo``: value-head PPO built from accelerate/peft/TRL parts); conditioning strategies
live in ``strategies.py``; ``backends.make_generator`` picks transformers or vLLM generation.
"""

from rlhf_persona.policy.generate import PolicyGenerator
from rlhf_persona.policy.registry import BASE, GLOBAL, AdapterInfo, AdapterRegistry
from rlhf_persona.policy.strategies import STRATEGIES, Route, Strategy, TrainJob
from rlhf_persona.policy.train import ALGORITHMS, train_policies

__all__ = [
    "ALGORITHMS",
    "BASE",
    "GLOBAL",
    "STRATEGIES",
    "AdapterInfo",
    "AdapterRegistry",
    "PolicyGenerator",
    "Route",
    "Strategy",
    "TrainJob",
    "train_policies",
]
