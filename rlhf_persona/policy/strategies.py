"""Segment conditioning strategies: which adapters to train, on which rows, and how to route.

A strategy turns (segments, their cards, their base models) into a plan: a list of ``TrainJob``
(one LoRA adapter each, trained on the rows of some segments, each row with an optional system
prompt) and a route per segment (adapter name + system prompt used at generation time).

- ``global``: one adapter on the pooled rows, no persona; every segment routes to it (baseline).
- ``adapter``: one adapter per segment, trained on that segment's rows only.
- ``prompt``: one adapter on all rows with each row's segment persona as the system prompt; a
  segment is served by that adapter with its own persona. Segments given their own base model
  (``policy.segment_models``) get one such adapter per base model.

Add a strategy by subclassing ``Strategy`` and ``STRATEGIES.register(name, cls)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from rlhf_persona.registry import Registry


@dataclass
class TrainJob:
    """One adapter to train: ``name`` on ``base_model``, from the rows of ``segments``."""

    name: str
    base_model: str
    segments: list[int]
    system_prompts: dict[int, str | None] = field(default_factory=dict)


@dataclass
class Route:
    """How a request is served: which adapter (None = base model) with which system prompt."""

    adapter: str | None
    system_prompt: str | None = None


@dataclass
class Plan:
    jobs: list[TrainJob]
    routes: dict[int, Route]


def group_by_base(
    segments: list[int], default_base: str, segment_models: dict[int, str]
) -> dict[str, list[int]]:
    """Segments grouped by their base model spec, default base first."""
    groups: dict[str, list[int]] = {default_base: []}
    for seg in sorted(segments):
        groups.setdefault(segment_models.get(seg, default_base), []).append(seg)
    return {base: segs for base, segs in groups.items() if segs}


class Strategy(ABC):
    """Plans the adapters of one conditioning strategy."""

    name: str

    @abstractmethod
    def plan(
        self,
        segments: list[int],
        cards: dict[int, str],
        default_base: str,
        segment_models: dict[int, str],
    ) -> Plan: ...


class GlobalStrategy(Strategy):
    """One adapter on pooled data, no persona: the baseline personalization must beat."""

    name = "global"

    def plan(self, segments, cards, default_base, segment_models):
        job = TrainJob("global", default_base, sorted(segments))
        return Plan([job], {seg: Route("global") for seg in segments})


class AdapterStrategy(Strategy):
    """One LoRA adapter per segment on its (shared or overridden) base, on its own rows."""

    name = "adapter"

    def plan(self, segments, cards, default_base, segment_models):
        jobs = [
            TrainJob(f"segment_{seg}", segment_models.get(seg, default_base), [seg])
            for seg in sorted(segments)
        ]
        return Plan(jobs, {job.segments[0]: Route(job.name) for job in jobs})


class PromptStrategy(Strategy):
    """One adapter per base model trained on all its segments' rows, persona as system prompt."""

    name = "prompt"

    def plan(self, segments, cards, default_base, segment_models):
        jobs, routes = [], {}
        for base, segs in group_by_base(segments, default_base, segment_models).items():
            name = "prompt" if base == default_base else "prompt_" + "_".join(map(str, segs))
            prompts = {seg: cards.get(seg) for seg in segs}
            jobs.append(TrainJob(name, base, segs, prompts))
            routes.update({seg: Route(name, prompts[seg]) for seg in segs})
        return Plan(jobs, routes)


# ``policy.strategy`` choices (the global baseline is trained beside any of them, when
# ``policy.train_global``): both the config's validation and ``train_policies`` read this table.
STRATEGIES: Registry[type[Strategy]] = Registry("policy strategy")
for _cls in (AdapterStrategy, PromptStrategy):
    STRATEGIES.register(_cls.name, _cls)
