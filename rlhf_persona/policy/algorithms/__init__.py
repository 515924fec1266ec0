"""Policy optimisation algorithms: one module each, registered in ``ALGORITHMS``.

Like TRL's config + trainer pairs, each module (``dpo``, ``kto``, ``grpo``, ``rloo``, ``ppo``)
declares everything the rest of the code needs to know about it, in one ``Algorithm``:

- ``config``: its section of the config, ``policy.<name>:`` (a pydantic model);
- ``data``: what it learns from: ``pairs`` (preference pairs: prompt, chosen, rejected),
  ``thumbs`` (unpaired liked / disliked replies: prompt, completion, label) or ``online``
  (prompts; replies are sampled during training and scored by a reward function);
- ``columns`` and ``format_row``: the rows it requires and how they become its trainer's rows;
- ``train(model, tokenizer, dataset, cfg, output_dir, *, device, bf16, seed, reward_fn)``.

The loop and ``train_policies`` ask the algorithm (``ALGORITHMS.get(name)``) instead of testing
names, so adding an algorithm is one module here that calls ``ALGORITHMS.register`` (or, from
outside the package, ``ALGORITHMS.register(name, Algorithm(...))``). The modules import torch and
TRL inside their functions: validating a config imports every module of this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from rlhf_persona.config import Section
from rlhf_persona.registry import Registry

ALGORITHMS: Registry[Algorithm] = Registry("policy algorithm", package=__name__)


@dataclass(frozen=True)
class Algorithm:
    """What the rest of the code knows about one algorithm.

    Attributes:
        name: its ``policy.algorithm`` value and its section's key (``policy.<name>``).
        data: ``pairs``, ``thumbs`` or ``online`` (see the module docstring).
        config: the pydantic model of its section; ``PolicyConfig.section(name)`` returns it.
        columns: the training rows' required columns (``segment_id`` besides).
        format_row: ``(row, tokenizer) -> row`` of its trainer's dataset.
        train: ``(model, tokenizer, dataset, cfg, output_dir, *, device, bf16, seed,
            reward_fn)`` → a trainer exposing ``model`` and ``state.log_history``.
        grouped: each step trains on whole groups of replies per prompt (GRPO, RLOO):
            ``policy.batch_size`` must be a multiple of the section's ``num_generations``.
    """

    name: str
    data: Literal["pairs", "thumbs", "online"]
    config: type[BaseModel]
    columns: tuple[str, ...]
    format_row: Callable[[dict, object], dict]
    train: Callable
    grouped: bool = False

    @property
    def online(self) -> bool:
        """Samples its own replies during training: needs a reward function, no pairs."""
        return self.data == "online"


class AlgorithmSection(Section):
    """Base of the ``policy.<algorithm>`` sections. ``legacy_names`` maps a flat key of the
    ``policy:`` section (the layout before sections) to this section's field, where they differ."""

    legacy_names: ClassVar[dict[str, str]] = {}


class OfflineSection(AlgorithmSection):
    """DPO and KTO: learn from replies users have judged."""

    sft_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of an added negative log-likelihood of the liked replies (chosen / "
        "thumbs-up), per token. It keeps pulling them up where the preference loss has "
        "saturated, which stops a drift into word salad.",
    )
    reference: Literal["previous", "base"] = Field(
        "previous",
        description="Reference policy when an adapter is trained further (loop."
        "continue_adapters): previous = the adapter as it was (TRL's default; the drift from "
        "the base adds up over rounds), base = the base model (the KL stays anchored).",
    )


class RolloutSection(AlgorithmSection):
    """GRPO, RLOO and PPO: sample replies during training."""

    max_completion_length: int = Field(
        40, ge=1, description="Max tokens sampled per completion in training."
    )
    temperature: float = Field(
        1.0, gt=0, description="Sampling temperature of the training rollouts."
    )
    num_iterations: int = Field(
        1, ge=1, description="Clipped updates per rollout batch (PPO epochs)."
    )


class GroupSection(RolloutSection):
    """GRPO and RLOO: the baseline is the mean reward of a group of replies to one prompt."""

    num_generations: int = Field(
        4,
        ge=2,
        description="Completions sampled per prompt (the group); policy.batch_size "
        "must be a multiple of it.",
    )
    use_vllm: bool = Field(
        False,
        description="Sample training rollouts with vLLM (TRL's use_vllm, colocate mode). Needs "
        "CUDA and the vllm package; without them, falls back to transformers.",
    )
