"""Simulated users: populations as data, reply features, feedback, the oracle, gymnasium envs.

    from rlhf_persona.simulation import load_population, FeedbackSimulator, reply_features
    pop = load_population("four_segments")          # or a path to a YAML file
    users = pop.sample_users(400, seed=0)            # users.records(): ids + profiles (public)
    sim = FeedbackSimulator(users, seed=0)
    events = sim.respond(user_idx, prompts, replies) # event dicts for the feedback store

Training code may read ``users.records()`` and the events, never ``users.truth`` or ``oracle``.
Importing this package registers ``rlhf_persona/UserFeedback-v0`` and
``rlhf_persona/PairwiseFeedback-v0`` with Gymnasium. Everything else loads on first use, so
importing the package (e.g. for the CLI) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import gymnasium

if TYPE_CHECKING:
    from rlhf_persona.simulation import oracle
    from rlhf_persona.simulation.envs import PairwiseFeedbackEnv, UserFeedbackEnv
    from rlhf_persona.simulation.features import FEATURE_NAMES, reply_features
    from rlhf_persona.simulation.population import Users, sample_prompts, sample_users
    from rlhf_persona.simulation.schema import (
        Population,
        PopulationError,
        load_population,
        parse_population,
        shipped_populations,
    )
    from rlhf_persona.simulation.user import FeedbackBatch, FeedbackSimulator, utility

_EXPORTS = {
    "FEATURE_NAMES": "features",
    "reply_features": "features",
    "Users": "population",
    "sample_prompts": "population",
    "sample_users": "population",
    "Population": "schema",
    "PopulationError": "schema",
    "load_population": "schema",
    "parse_population": "schema",
    "shipped_populations": "schema",
    "FeedbackBatch": "user",
    "FeedbackSimulator": "user",
    "utility": "user",
    "PairwiseFeedbackEnv": "envs",
    "UserFeedbackEnv": "envs",
}
__all__ = [
    "FEATURE_NAMES",
    "FeedbackBatch",
    "FeedbackSimulator",
    "PairwiseFeedbackEnv",
    "Population",
    "PopulationError",
    "UserFeedbackEnv",
    "Users",
    "load_population",
    "oracle",
    "parse_population",
    "reply_features",
    "sample_prompts",
    "sample_users",
    "shipped_populations",
    "utility",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    if name == "oracle":
        return importlib.import_module(f"{__name__}.oracle")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_envs() -> None:
    """Register both environments with Gymnasium (idempotent; the env module loads on make)."""
    for name in ("UserFeedback", "PairwiseFeedback"):
        env_id = f"rlhf_persona/{name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=f"{__name__}.envs:{name}Env")


register_envs()
