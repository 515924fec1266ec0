"""Preference rows in, checked arrays out: what every reward strategy trains on.

The input is the feedback store's preference export (``export_preference(store, segments)`` →
``(datasets.Dataset, report)`` with columns prompt, chosen, rejected, margin, user_id,
segment_id), the Dataset alone, or a list of such dicts. Pairs come from A/B choices, from two
ratings of one prompt within a segment (``margin`` = rating gap) and from a thumbs-up and a
thumbs-down on one prompt; thumbs with no opposite partner cannot make a pair and are counted in
the export's report, which ``PairData.report`` carries on to the run's log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rlhf_persona.errors import UserError

REQUIRED = ("prompt", "chosen", "rejected")
NO_SEGMENT = -1


def message_text(value, role: str | None = None) -> str:
    """Plain text of a string or of a conversational value (list of ``{"role", "content"}``).

    For a list, the last message of ``role`` (any role when None) is taken: the user's question
    of a prompt, the assistant's answer of a completion.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        return str(value["content"])
    if isinstance(value, Sequence):
        msgs = [m for m in value if isinstance(m, dict) and (role is None or m.get("role") == role)]
        if msgs:
            return str(msgs[-1].get("content", ""))
        return " ".join(message_text(m) for m in value)
    raise UserError(f"expected text or chat messages, got {type(value).__name__}")


@dataclass
class PairData:
    """Preference pairs as parallel arrays; ``segment`` is −1 where a row has no segment."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    margin: np.ndarray
    segment: np.ndarray
    user_ids: list[str | None]
    report: dict = field(default_factory=dict)
    # The rejected reply's own prompt where it answered another one (pairs across prompts);
    # None: every pair shares its prompt.
    rejected_prompts: list[str] | None = None

    def __post_init__(self) -> None:
        if self.rejected_prompts is None:
            self.rejected_prompts = self.prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def both_prompts(self) -> list[str]:
        """Prompts of ``chosen + rejected`` (the rows a reward model scores for these pairs)."""
        return self.prompts + self.rejected_prompts

    def counts(self) -> dict[int, int]:
        """Pairs per segment id (−1: rows without a segment)."""
        return {int(k): v for k, v in sorted(Counter(self.segment.tolist()).items())}

    def subset(self, rows: np.ndarray) -> PairData:
        rows = np.asarray(rows, dtype=np.int64)
        pick = [int(i) for i in rows]
        return PairData(
            [self.prompts[i] for i in pick],
            [self.chosen[i] for i in pick],
            [self.rejected[i] for i in pick],
            self.margin[rows],
            self.segment[rows],
            [self.user_ids[i] for i in pick],
            dict(self.report),
            [self.rejected_prompts[i] for i in pick],
        )


def _segment_value(value) -> int:
    if value is None:
        return NO_SEGMENT
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"preference export: segment_id {value!r} is not an integer") from None


def pairs_from(data) -> PairData:
    """``PairData`` from an export ``(Dataset, report)``, a Dataset or a list of row dicts."""
    report: dict = {}
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], dict):
        data, report = data
    if hasattr(data, "column_names"):
        columns, n = list(data.column_names), len(data)
        get = data.__getitem__  # a Dataset returns a whole column by name
    elif isinstance(data, list):
        columns = sorted({k for row in data for k in row}) if data else list(REQUIRED)
        n = len(data)

        def get(key):
            return [row.get(key) for row in data]
    else:
        raise UserError(f"preference data: expected a Dataset or a list of rows, got {type(data)}")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise UserError(
            f"preference data: missing column(s) {missing}; the preference export has "
            "prompt, chosen, rejected, margin, user_id, segment_id"
        )
    if n == 0:
        raise UserError(
            "preference data: no pairs; pairs come from A/B choices, from two ratings of one "
            "prompt, and from a thumbs-up and a thumbs-down on one prompt"
        )
    margin = get("margin") if "margin" in columns else [0.0] * n
    segment = get("segment_id") if "segment_id" in columns else [None] * n
    users = get("user_id") if "user_id" in columns else [None] * n
    prompts = [message_text(p, "user") for p in get("prompt")]
    rejected_prompts = None
    if "rejected_prompt" in columns:  # pairs across prompts (export_preference(across_prompts))
        rejected_prompts = [
            p if r is None else message_text(r, "user")
            for p, r in zip(prompts, get("rejected_prompt"), strict=True)
        ]
    return PairData(
        prompts,
        [message_text(c, "assistant") for c in get("chosen")],
        [message_text(r, "assistant") for r in get("rejected")],
        np.array([0.0 if m is None else float(m) for m in margin], dtype=np.float32),
        np.array([_segment_value(s) for s in segment], dtype=np.int64),
        [None if u is None else str(u) for u in users],
        dict(report),
        rejected_prompts,
    )
