"""Per-segment policies: DPO / KTO offline, GRPO / RLOO / PPO online, LoRA adapters or personas.

- ``train_policies(policy_cfg, base_spec, data, cards, out_dir, reward_fn=None, run=None,
  round=0)`` trains the global baseline and the configured strategy's adapters → registry.
- ``AdapterRegistry`` (``registry.py``): adapters per segment + manifest; ``AdapterRegistry.load``.
- ``PolicyGenerator(registry).generate(keys, prompts)``: grouped, batched generation; also
  ``logprobs`` and ``kl_from_base`` for evaluation.

One module per algorithm in ``algorithms/`` (``dpo``, ``kto``, ``grpo``, ``rloo``: thin layers
over TRL's trainers; ``ppo``: value-head PPO, its trainer in ``ppo_trainer.py``), each declaring
its config section, the data it learns from and ``train``, registered in ``ALGORITHMS``; ``sft``
is the optional warm start before any of them; conditioning strategies live in
``strategies.py``; ``backends.make_generator`` picks transformers or vLLM generation.
Exports load lazily, so importing the package (e.g. for the CLI) does not import TRL.
"""

from importlib import import_module

_EXPORTS = {
    "PolicyGenerator": "rlhf_persona.policy.generate",
    **dict.fromkeys(("BASE", "GLOBAL", "AdapterInfo", "AdapterRegistry"),
                    "rlhf_persona.policy.registry"),
    **dict.fromkeys(("STRATEGIES", "Route", "Strategy", "TrainJob"),
                    "rlhf_persona.policy.strategies"),
    **dict.fromkeys(("ALGORITHMS", "Algorithm"), "rlhf_persona.policy.algorithms"),
    "train_policies": "rlhf_persona.policy.train",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlhf_persona.policy' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
