"""Simulated preference data for reward models: a training export and held-out pairs with truth.

The split the evaluation needs, built from a population (``envs/*.yaml``):

* **prompt pools**: distinct prompts (``styles.PROMPT_TEMPLATES`` × topics × keywords), shuffled,
  split into a *training* pool and a disjoint *test* pool (the "unseen prompts"); each prompt
  gets a few replies written cheaply by the corpus generator (``models/corpus.py``) in random
  styles — no policy sampling needed;
* **users**: sampled from the population; a share (``eval_users``) is held out as *new users*;
* **training labels**: each training user answers ``eval_labels_per_user`` A/B choices on
  training-pool prompts about their interests (the simulator's Bradley–Terry noise); these
  events segment the users (``Segmenter``) and become the preference export;
* **held-out pairs** (test pool): for the training users (*seen users, unseen prompts*) and for
  the new users (*unseen users*, segment assigned from their profile only), each with the
  user's true preference probability for evaluation;
* **shots**: the new users' own labels on training-pool prompts, for the few-shot curve.

Training code gets only ``preference_dataset()`` and the segment cards; ``truth`` fields
(``p_true``, ``true_segment``, feature vectors) are for the evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from rlhf_persona import styles
from rlhf_persona.errors import UserError

STREAM = 17  # our own random stream, independent of the simulator's streams


@dataclass
class PromptPool:
    """Prompts with their topics and ``R`` styled replies each."""

    prompts: list[str]
    topics: list[str]
    replies: list[list[str]]

    def by_topic(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, t in enumerate(self.topics):
            out.setdefault(t, []).append(i)
        return out


def prompt_pools(
    n_train: int, n_test: int, replies: int, seed: int
) -> tuple[PromptPool, PromptPool]:
    """Disjoint training and test pools of distinct prompts, each with ``replies`` replies."""
    from rlhf_persona.models.corpus import Style, make_reply

    every: dict[str, tuple[str, str | None]] = {}
    for template in styles.PROMPT_TEMPLATES:
        for topic, keywords in styles.TOPICS.items():
            for kw in keywords:
                text = template.format(topic=topic, kw=kw)
                every.setdefault(text, (topic, kw if "{kw}" in template else None))
    if n_train + n_test > len(every):
        raise UserError(
            f"reward.eval_prompts: {n_train} training + {n_test} test prompts asked, but only "
            f"{len(every)} distinct prompts exist"
        )
    rng = random.Random(seed * 1_000_003 + STREAM)
    order = sorted(every)
    rng.shuffle(order)

    def pool(texts: list[str]) -> PromptPool:
        topics, answers = [], []
        for text in texts:
            topic, kw = every[text]
            kw = kw or rng.choice(styles.TOPICS[topic])
            topics.append(topic)
            answers.append([make_reply(Style.sample(rng), topic, kw, rng) for _ in range(replies)])
        return PromptPool(texts, topics, answers)

    return pool(order[n_test : n_test + n_train]), pool(order[:n_test])


@dataclass
class PairSet:
    """Labelled pairs, one row per (user, prompt, reply a, reply b).

    ``label`` is the user's (noisy) choice: +1 a, −1 b. ``p_true``, ``true_segment`` and the
    feature arrays are the simulator's truth: evaluation only.
    """

    user_idx: np.ndarray
    prompts: list[str]
    reply_a: list[str]
    reply_b: list[str]
    label: np.ndarray
    p_true: np.ndarray
    features_a: np.ndarray
    features_b: np.ndarray
    true_segment: np.ndarray
    events: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_idx)

    def subset(self, rows) -> PairSet:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        pick = rows.tolist()
        return PairSet(
            self.user_idx[rows],
            [self.prompts[i] for i in pick],
            [self.reply_a[i] for i in pick],
            [self.reply_b[i] for i in pick],
            self.label[rows],
            self.p_true[rows],
            self.features_a[rows],
            self.features_b[rows],
            self.true_segment[rows],
            [],
        )


def _draw(users, user_idx: np.ndarray, per_user: int, pool: PromptPool, seed: int, stream: int):
    """``per_user`` (user, prompt, reply a, reply b) draws for each user; prompts follow the
    simulator's topic choice (mostly the user's interests), mapped to a pool prompt."""
    from rlhf_persona.simulation import sample_prompts

    rows = np.repeat(np.asarray(user_idx, dtype=np.int64), per_user)
    _, topics = sample_prompts(users, rows, seed=seed, round=stream)
    rng = np.random.default_rng([seed, STREAM, stream])
    index = pool.by_topic()
    prompt_idx = np.array(
        [
            (
                index[t][rng.integers(len(index[t]))]
                if t in index
                else rng.integers(len(pool.prompts))
            )
            for t in topics
        ],
        dtype=np.int64,
    )
    n_replies = len(pool.replies[0])
    first = rng.integers(n_replies, size=len(rows))
    second = (first + 1 + rng.integers(n_replies - 1, size=len(rows))) % n_replies
    return rows, prompt_idx, first, second


def _label(sim, users, draws, pool: PromptPool, embed: bool) -> PairSet:
    from rlhf_persona.simulation import oracle, reply_features

    rows, prompt_idx, a, b = draws
    prompts = [pool.prompts[i] for i in prompt_idx]
    ra = [pool.replies[i][j] for i, j in zip(prompt_idx, a, strict=True)]
    rb = [pool.replies[i][j] for i, j in zip(prompt_idx, b, strict=True)]
    interests = [users.interests[u] for u in rows]
    fa = reply_features(prompts, ra, interests, embed=embed)
    fb = reply_features(prompts, rb, interests, embed=embed)
    batch = sim.respond_features(rows, fa, fb, kind="pairwise")
    return PairSet(
        rows,
        prompts,
        ra,
        rb,
        batch.value.astype(np.int64),
        oracle.preference_probability(users, rows, fa, fb),
        fa,
        fb,
        users.truth.segment[rows],
        sim.events(batch, prompts, ra, rb),
    )


@dataclass
class SimSplit:
    """Everything ``simulate_split`` builds (see the module docstring)."""

    population: object
    users: object
    train_users: np.ndarray
    new_users: np.ndarray
    train: PairSet
    seen: PairSet
    unseen: PairSet
    shots: PairSet
    segmenter: object
    segment_of: np.ndarray  # segment id per user (training users: fitted; new: from profile)

    @property
    def cards(self) -> list:
        return list(self.segmenter.cards_)

    def segments(self, pairs: PairSet) -> np.ndarray:
        return self.segment_of[pairs.user_idx]

    def preference_dataset(self):
        """The training labels in the preference export's format (a ``datasets.Dataset``)."""
        from datasets import Dataset

        t = self.train
        chosen = [a if y > 0 else b for a, b, y in zip(t.reply_a, t.reply_b, t.label, strict=True)]
        rejected = [
            b if y > 0 else a for a, b, y in zip(t.reply_a, t.reply_b, t.label, strict=True)
        ]
        return Dataset.from_dict(
            {
                "prompt": t.prompts,
                "chosen": chosen,
                "rejected": rejected,
                "margin": [1.0] * len(t),
                "user_id": [self.users.ids[u] for u in t.user_idx],
                "segment_id": self.segment_of[t.user_idx].tolist(),
            }
        )

    def assign_from_feedback(self, user_idx: np.ndarray, events: list[dict]) -> np.ndarray:
        """Segment ids of ``user_idx`` from their profiles and these feedback events."""
        from rlhf_persona.segmentation import user_table_from_events

        records = [
            {"user_id": self.users.ids[u], "profile": self.users.profile(u)} for u in user_idx
        ]
        table = user_table_from_events(records, events, stats=self.segmenter.behaviour_stats_)
        return np.asarray(self.segmenter.assign(table)[0])


def simulate_split(
    population="four_segments",
    n_users: int | None = None,
    reward_cfg=None,
    segmentation_cfg=None,
    seed: int = 0,
    embed: bool = False,
    max_shots: int = 50,
) -> SimSplit:
    """Build the simulated split (module docstring). ``embed=False`` measures the relevance
    feature as neutral instead of embedding every reply with MiniLM (much cheaper; the feedback
    and the ceilings use the same features, so the simulation stays consistent)."""
    from rlhf_persona.config import RewardConfig, SegmentationConfig
    from rlhf_persona.segmentation import segmenter_from_config, user_table_from_events
    from rlhf_persona.simulation import FeedbackSimulator, load_population, sample_users

    cfg = reward_cfg or RewardConfig()
    pop = load_population(population)
    users = sample_users(pop, n_users, seed=seed)
    order = np.random.default_rng([seed, STREAM]).permutation(len(users))
    n_new = max(1, int(round(cfg.eval_users * len(users))))
    new_users, train_users = np.sort(order[:n_new]), np.sort(order[n_new:])
    train_pool, test_pool = prompt_pools(
        cfg.eval_prompts, max(2, cfg.eval_prompts // 3), cfg.eval_replies_per_prompt, seed
    )
    sim = FeedbackSimulator(users, seed=seed, embed=embed)
    per_user = cfg.eval_labels_per_user
    train = _label(
        sim, users, _draw(users, train_users, per_user, train_pool, seed, 1), train_pool, embed
    )
    tests = cfg.eval_test_pairs_per_user
    seen = _label(
        sim, users, _draw(users, train_users, tests, test_pool, seed, 2), test_pool, embed
    )
    unseen = _label(
        sim, users, _draw(users, new_users, tests, test_pool, seed, 3), test_pool, embed
    )
    shots = _label(
        sim, users, _draw(users, new_users, max_shots, train_pool, seed, 4), train_pool, embed
    )

    records = [{"user_id": users.ids[u], "profile": users.profile(u)} for u in train_users]
    table = user_table_from_events(records, train.events)
    segmenter = segmenter_from_config(segmentation_cfg or SegmentationConfig(), seed).fit(table)
    segment_of = np.full(len(users), -1, dtype=np.int64)
    segment_of[train_users] = segmenter.labels_
    split = SimSplit(pop, users, train_users, new_users, train, seen, unseen, shots, segmenter,
                     segment_of)  # fmt: skip
    segment_of[new_users] = split.assign_from_feedback(new_users, [])
    return split
