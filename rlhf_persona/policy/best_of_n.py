"""Best-of-n serving: sample n replies from the user's segment policy, return the one the
user-level reward scores highest.

    from rlhf_persona.policy.best_of_n import best_of_n
    out = best_of_n(generator, reward, segment_ids, prompts, user_ids=ids, n=cfg.reward.best_of_n)
    out.replies, out.scores, out.latency_s

``reward`` is anything with ``score(segment_ids, prompts, replies[, user_ids=...])``: a
``UserLevelReward`` (personal) or a segment reward model. ``n = 1`` is plain generation (no
scoring). The n candidates of every request go through the generator in one call (rows are
repeated, so they batch with the rest of their segment), so the cost is ≈ n × one generation
plus one scoring pass: ``latency_s`` reports it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rlhf_persona.errors import UserError


@dataclass
class BestOfN:
    """Chosen reply per request, its reward (NaN when n = 1), and the call's wall time."""

    replies: list[str]
    scores: np.ndarray
    latency_s: float
    n: int


def _score(reward, keys, prompts, replies, user_ids):
    if user_ids is not None:
        try:
            return np.asarray(reward.score(keys, prompts, replies, user_ids=user_ids))
        except TypeError:  # a segment-only reward model has no user_ids argument
            pass
    return np.asarray(reward.score(keys, prompts, replies))


def best_of_n(generator, reward, segment_ids: Sequence, prompts: Sequence[str],
              user_ids: Sequence[str] | None = None, n: int = 4, max_new_tokens: int = 64,
              temperature: float = 1.0, seed: int = 0, top_p: float = 1.0) -> BestOfN:  # fmt: skip
    """Best of ``n`` sampled replies per (segment, prompt[, user]) by ``reward`` (module doc)."""
    if n < 1:
        raise UserError(f"best_of_n: n must be ≥ 1, got {n}")
    if len(segment_ids) != len(prompts) or (user_ids is not None and len(user_ids) != len(prompts)):
        raise UserError("best_of_n: segment_ids, prompts and user_ids must have equal lengths")
    start = time.perf_counter()
    m = len(prompts)
    keys, prompts = list(segment_ids) * n, list(prompts) * n
    replies = generator.generate(keys, prompts, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, seed=seed)  # fmt: skip
    if n == 1 or reward is None:
        return BestOfN(replies[:m], np.full(m, np.nan), time.perf_counter() - start, n)
    users = list(user_ids) * n if user_ids is not None else None
    segs = [k if not isinstance(k, str) else None for k in keys]  # global/base: no segment
    scores = _score(reward, segs, prompts, replies, users).reshape(n, m)
    pick = scores.argmax(0)
    chosen = [replies[int(k) * m + j] for j, k in enumerate(pick)]
    return BestOfN(chosen, scores[pick, np.arange(m)], time.perf_counter() - start, n)
