"""Gymnasium environments over a simulated user population.

Registered on ``import rlhf_persona.simulation`` as ``rlhf_persona/UserFeedback-v0`` and
``rlhf_persona/PairwiseFeedback-v0`` (or without the import:
``gym.make("rlhf_persona.simulation:rlhf_persona/UserFeedback-v0")``).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlhf_persona import styles
from rlhf_persona.simulation.features import reply_features
from rlhf_persona.simulation.population import Users, sample_prompts
from rlhf_persona.simulation.schema import Population, load_population
from rlhf_persona.simulation.user import FeedbackSimulator, utility

TOPIC_NAMES: tuple[str, ...] = tuple(styles.TOPICS)
REPLY_CHARSET = string.printable + "".join(styles.EMOJI) + "•"
FEEDBACK_SIGNALS = ("thumbs", "rating", "channels", "utility")
MAX_TEXT = 4000
OPEN_BOUND = 1e6


class _PopulationEnv(gym.Env):
    """Shared machinery: a fixed pool of sampled users, sessions of prompts, feedback."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        population: str | Path | Population = "four_segments",
        users: int | None = None,
        users_seed: int = 0,
        session_length: int = 5,
        feedback: str = "thumbs",
        embed: bool = True,
        round: int = 0,
    ) -> None:
        if feedback not in FEEDBACK_SIGNALS:
            raise ValueError(f"feedback must be one of {FEEDBACK_SIGNALS} (got {feedback!r})")
        if session_length < 1:
            raise ValueError(f"session_length must be >= 1 (got {session_length})")
        self.population = load_population(population)
        self.users: Users = self.population.sample_users(users, users_seed)
        self.session_length = session_length
        self.feedback = feedback
        self.embed = embed
        self.round = round
        self.observation_space = self._observation_space()
        self._user = 0
        self._prompts: list[str] = []
        self._t = 0
        self._sim = FeedbackSimulator(self.users, seed=0, embed=embed)

    # ------------------------------------------------------------------ spaces / observations
    def _observation_space(self) -> spaces.Dict:
        text = spaces.Text(max_length=MAX_TEXT, min_length=0, charset=string.printable)
        seg = self.population.segments[0].profile
        profile: dict[str, spaces.Space] = {k: text for k in seg.categorical}
        profile.update({k: self._numeric_box(k) for k in seg.numeric})
        profile["interests"] = spaces.MultiBinary(len(TOPIC_NAMES))
        return spaces.Dict({"user_id": text, "profile": spaces.Dict(profile), "prompt": text})

    def _numeric_box(self, key: str) -> spaces.Box:
        """Bounds from the population's clip range; ±OPEN_BOUND where it leaves one open."""
        specs = [s.profile.numeric[key] for s in self.population.segments]
        lows, highs = [s.min for s in specs], [s.max for s in specs]
        low = -OPEN_BOUND if None in lows else min(lows)
        high = OPEN_BOUND if None in highs else max(highs)
        return spaces.Box(low, high, shape=(1,), dtype=np.float64)

    def _profile_obs(self, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.users.profile(i).items():
            if key == "interests":
                out[key] = np.array([t in value for t in TOPIC_NAMES], dtype=np.int8)
            elif isinstance(value, float):
                out[key] = np.array([value], dtype=np.float64)
            else:
                out[key] = value
        return out

    def _obs(self) -> dict[str, Any]:
        prompt = self._prompts[min(self._t, self.session_length - 1)]
        return {
            "user_id": self.users.ids[self._user],
            "profile": self._profile_obs(self._user),
            "prompt": prompt,
        }

    # ------------------------------------------------------------------ episode
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a session of a random user (or ``options={"user_id": ...}``)."""
        super().reset(seed=seed)
        options = options or {}
        if "user_id" in options:
            self._user = self.users.index(options["user_id"])
        else:
            self._user = int(self.np_random.integers(len(self.users)))
        episode_seed = int(self.np_random.integers(2**31))
        self._prompts, _ = sample_prompts(
            self.users, np.full(self.session_length, self._user), episode_seed, self.round
        )
        self._sim = FeedbackSimulator(self.users, seed=episode_seed, embed=self.embed)
        self._t = 0
        return self._obs(), {"session_length": self.session_length}

    def _advance(self) -> tuple[bool, bool]:
        self._t += 1
        return self._t >= self.session_length, False

    # ------------------------------------------------------------------ feedback
    def _reward(self, kind: str, value: int, util: float) -> float:
        if self.feedback == "utility":
            return util
        if kind == "rating":
            return (value - 3) / 2.0
        return float(value)  # thumbs ±1, pairwise ±1, abstain 0

    def _single_kind(self) -> str | None:
        return {"thumbs": "thumbs", "rating": "rating"}.get(self.feedback)

    def evaluate(
        self,
        user_idx,
        prompts: list[str],
        replies: list[str],
        other_replies: list[str] | None = None,
        seed: int = 0,
    ) -> tuple[np.ndarray, list[dict]]:
        """Batched path: rewards and feedback events for many (user, prompt, reply) rows.

        One feature pass over all rows (MiniLM in batches), then vectorised feedback, using
        this env's ``feedback`` signal (pairwise when ``other_replies`` is given). Thousands of
        replies take seconds (``embed=False``: milliseconds).
        """
        idx = np.asarray(user_idx, dtype=np.int64)
        sim = FeedbackSimulator(self.users, seed=seed, embed=self.embed)
        kind = "pairwise" if other_replies is not None else self._single_kind()
        batch, feats = sim.respond_texts(idx, prompts, replies, other_replies, kind, self.round)
        if self.feedback == "utility":
            pref = self.users.preferences(self.round)[idx]
            rewards = utility(pref, feats)
            if other_replies is not None:
                interests = [self.users.interests[i] for i in idx]
                other = reply_features(prompts, other_replies, interests, embed=self.embed)
                rewards = rewards - utility(pref, other)
        else:
            rewards = batch.value.astype(np.float64)
            rating = batch.kind == 1
            rewards[rating] = (rewards[rating] - 3) / 2.0
        return rewards, sim.events(batch, prompts, replies, other_replies)

    def _respond(self, replies: list[str]) -> tuple[float, dict | None]:
        prompt = self._prompts[self._t]
        others = replies[1:] or None
        kind = "pairwise" if others else self._single_kind()
        batch, feats = self._sim.respond_texts(
            [self._user], [prompt], replies[:1], others, kind, self.round
        )
        events = self._sim.events(batch, [prompt], replies[:1], others)
        util = 0.0
        if self.feedback == "utility":
            pref = self.users.preferences(self.round)[[self._user]]
            util = float(utility(pref, feats)[0])
            if others:
                interests = [self.users.interests[self._user]]
                other = reply_features([prompt], others, interests, embed=self.embed)
                util -= float(utility(pref, other)[0])
        reward = self._reward(batch.kinds[0], int(batch.value[0]), util)
        return reward, (events[0] if events else None)


class UserFeedbackEnv(_PopulationEnv):
    """One episode is one simulated user's chat session; the agent replies, the user reacts.

    ## Action Space
    ``Text(max_length=4000, min_length=0)``: the reply text (printable ASCII, newlines, the
    corpus emoji; any other string is accepted too).

    ## Observation Space
    ``Dict``: ``user_id`` (Text), ``profile`` (Dict: one Text per categorical profile field such
    as ``age_band``, ``occupation``, ``region``; a ``Box(1,)`` per numeric field such as
    ``sessions_per_week``; ``interests`` as ``MultiBinary(16)`` over ``styles.TOPICS``) and
    ``prompt`` (Text): the user's current message. The hidden preference is never observed.

    ## Rewards
    Set by ``feedback``: ``"thumbs"`` (default) +1 up / −1 down; ``"rating"`` (r − 3) / 2 in
    [−1, 1]; ``"channels"`` the user's own channel mix (thumbs, rating or abstain = 0);
    ``"utility"`` the true utility (an oracle signal: for evaluation and upper bounds only).
    ``info["event"]`` is the feedback event dict (the feedback store's shape), None on abstain.

    ## Starting State
    A user drawn uniformly from a pool of ``users`` users sampled once from the population
    (seed ``users_seed``), and ``session_length`` prompts on that user's topics.

    ## Episode End
    Terminates after ``session_length`` replies; never truncates.

    ## Arguments
    ``population`` (shipped name, YAML path or ``Population``; default ``"four_segments"``),
    ``users`` (pool size; default the population's ``default_users``), ``users_seed`` (0),
    ``session_length`` (5), ``feedback`` (``"thumbs"``), ``embed`` (True: MiniLM relevance
    feature; False: faster), ``round`` (0: selects drifted preferences).
    ``reset(seed=...)`` fixes the user, prompts and feedback; ``options={"user_id": ...}``
    picks the user. ``evaluate(user_idx, prompts, replies)`` is the batched path.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.action_space = spaces.Text(max_length=MAX_TEXT, min_length=0, charset=REPLY_CHARSET)

    def step(self, action: str):
        reward, event = self._respond([str(action)])
        terminated, truncated = self._advance()
        return self._obs(), reward, terminated, truncated, {"event": event}


class PairwiseFeedbackEnv(_PopulationEnv):
    """Like ``UserFeedback-v0`` but each step shows the user two replies and they pick one.

    ## Action Space
    ``Tuple(Text, Text)``: reply A and reply B.

    ## Observation Space
    As ``UserFeedback-v0``: ``Dict(user_id, profile, prompt)``.

    ## Rewards
    +1 when the user chooses reply A, −1 when they choose B (Bradley–Terry on their hidden
    utilities, rationality ``rationality.pairwise``); with ``feedback="utility"`` the true utility
    gap u_A − u_B instead. ``info["event"]`` is the pairwise event (``value`` +1 = A chosen).

    ## Starting State / Episode End / Arguments
    As ``UserFeedback-v0`` (``feedback`` accepts ``"channels"``/``"thumbs"``, meaning the
    choice, or ``"utility"``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        text = spaces.Text(max_length=MAX_TEXT, min_length=0, charset=REPLY_CHARSET)
        self.action_space = spaces.Tuple((text, text))

    def step(self, action: tuple[str, str]):
        reply_a, reply_b = action
        reward, event = self._respond([str(reply_a), str(reply_b)])
        terminated, truncated = self._advance()
        return self._obs(), reward, terminated, truncated, {"event": event}
