"""Simulated users: populations as data, reply features, feedback, the oracle, gymnasium envs.

    from rlhf_persona.simulation import load_population, FeedbackSimulator, reply_features
    pop = load_population("four_segments")          # or a path to a YAML file
    users = pop.sample_users(400, seed=0)            # users.records(): ids + profiles (public)
    sim = FeedbackSimulator(users, seed=0)
    events = sim.respond(user_idx, prompts, replies) # event dicts for the feedback store

Training code may read ``users.records()`` and the events, never ``users.truth`` or ``oracle``.
Importing this package registers ``rlhf_persona/UserFeedback-v0`` and
``rlhf_persona/PairwiseFeedback-v0`` with Gymnasium.
"""

from rlhf_persona.simulation import oracle
from rlhf_persona.simulation.envs import PairwiseFeedbackEnv, UserFeedbackEnv, register_envs
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

register_envs()

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
