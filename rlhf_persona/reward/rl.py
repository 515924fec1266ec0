"""A conditioned reward model as a reward function for TRL's GRPOTrainer / RLOOTrainer.

TRL calls reward functions as ``fn(prompts=..., completions=..., **columns)`` where ``columns``
holds every other column of the training dataset, one value per completion (repeated for each
of a prompt's generations). The segment therefore travels as a dataset column, ``segment_id`` by
default, and each completion is scored under its own row's segment. Prompts and completions may
be plain strings or conversations (lists of ``{"role", "content"}`` messages): the last user
message and the assistant's reply are what the reward model reads.
"""

from __future__ import annotations

import logging

from rlhf_persona.errors import UserError
from rlhf_persona.reward.data import message_text

log = logging.getLogger(__name__)


def make_reward_fn(rm, segment_column: str = "segment_id", batch_size: int = 64):
    """A TRL reward function ``fn(prompts, completions, **kwargs) -> list[float]``.

    Rows whose segment is missing (column absent from the dataset, or None) are an error for a
    conditioned model: reward for the wrong segment would silently train the wrong policy.
    """

    def reward_fn(prompts, completions, **kwargs) -> list[float]:
        segments = kwargs.get(segment_column)
        if rm.conditioned and (segments is None or any(s is None for s in segments)):
            raise UserError(
                f"reward function ({rm.strategy}): the dataset needs a {segment_column!r} "
                "column with a segment id on every row"
            )
        texts = [message_text(p, "user") for p in prompts]
        replies = [message_text(c, "assistant") for c in completions]
        return rm.score(segments, texts, replies, batch_size=batch_size).tolist()

    reward_fn.__name__ = f"reward_{rm.strategy}"  # TRL logs rewards under the function's name
    return reward_fn
