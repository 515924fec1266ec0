"""The versioned JSON metadata file of a saved artifact (segmenter, reward model, adapter
registry): written with ``stamp``, read back with ``read_meta``, which names the file and what is
wrong (missing, not JSON, another format or version) instead of failing later on a missing key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf_persona.errors import UserError


def stamp(fmt: str, version: int) -> dict[str, Any]:
    """The format name and version every saved metadata file starts with."""
    return {"format": fmt, "format_version": version}


def read_meta(path: str | Path, what: str, fmt: str, version: int, remedy: str, *,
              unnamed_is_current: bool = False) -> dict[str, Any]:  # fmt: skip
    """The metadata mapping in ``path``, checked to be ``fmt`` version ``version``.

    Args:
        what: the artifact, for messages ("segmenter").
        remedy: what to do about another version ("refit the segmenter").
        unnamed_is_current: read a file without a format name (written before it had one) as
            the current version.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path.parent}: not a saved {what} (no {path.name})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: not a saved {what} (not a JSON object)")
    if unnamed_is_current and not isinstance(meta.get("format"), str):
        meta = {**meta, **stamp(fmt, version)}
    if meta.get("format") != fmt or meta.get("format_version") != version:
        raise UserError(
            f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; this "
            f"version of rlhf_persona reads {fmt!r} version {version}: {remedy}"
        )
    return meta
