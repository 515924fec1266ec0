"""Import feedback from files: JSON lines of events, CSV ratings/thumbs, Polis exports.

Every importer goes through ``FeedbackStore.record_events`` (the same validation and
idempotency as the API), in batches. A bad row is reported with its line number and skipped
whole: its user, profile and event are written together or not at all. Users of deleted
(tombstoned) ids are skipped, so a re-import of old data cannot bring them back. Importing the
same file twice stores nothing new (event ids are derived from the row when the file has none).

External user ids from CSV and Polis files are stored only as keyed hashes: the user id in the
store is the pseudonym ``u_<hash>``.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlhf_persona.errors import UserError
from rlhf_persona.feedback.errors import StoreError
from rlhf_persona.feedback.schemas import FeedbackEventIn, first_error
from rlhf_persona.feedback.store import FeedbackStore

BATCH = 1000
CSV_FIELDS = ("user_id", "prompt", "reply", "item", "rating", "thumb", "chosen", "rejected",
              "other_reply", "choice", "event_id", "created_at", "comment", "reason_tags",
              "profile")  # fmt: skip
_THUMBS = {"1": 1, "+1": 1, "up": 1, "yes": 1, "true": 1, "y": 1, "👍": 1, "like": 1,
           "-1": -1, "down": -1, "no": -1, "false": -1, "n": -1, "👎": -1, "dislike": -1,
           "0": 0, "none": 0, "cleared": 0, "good": 1, "bad": -1, "positive": 1,
           "negative": -1, "helpful": 1, "unhelpful": -1, "accept": 1, "reject": -1,
           "correct": 1, "incorrect": -1}  # fmt: skip
# A/B choice cell -> pairwise value: +1 = the reply column won, -1 = the other_reply column won
_CHOICES = {"a": 1, "1": 1, "first": 1, "left": 1, "reply": 1,
            "b": -1, "2": -1, "-1": -1, "second": -1, "right": -1, "other": -1,
            "other_reply": -1}  # fmt: skip


@dataclass(frozen=True)
class ValueMapping:
    """How rating and thumb cells become store values: ``thumbs`` maps a lower-cased cell to
    +1 / -1 / 0 (cleared); ratings on the scale ``low..high`` are mapped linearly onto 1..5
    (rounded), turned round first when ``reverse`` (a scale where ``low`` is best)."""

    thumbs: Mapping[str, int] = field(default_factory=lambda: dict(_THUMBS))
    explicit_thumbs: bool = False
    low: float = 1
    high: float = 5
    reverse: bool = False

    def rating(self, text: str) -> int:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"rating: {text!r} is not a number") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"rating: {text!r} is outside the scale {self.low:g}..{self.high:g}")
        if self.reverse:
            value = self.low + self.high - value
        scaled = 1 + 4 * (value - self.low) / (self.high - self.low)
        if (self.low, self.high) == (1, 5) and value != int(value):
            raise ValueError(f"rating: {text!r} is not a whole number")
        return int(round(scaled))

    def thumb(self, text: str) -> int:
        key = text.strip().lower()
        if key not in self.thumbs:
            raise ValueError(f"thumb: {text!r} is not up/down (1/-1, yes/no, ...; see "
                             "--thumb-values)")  # fmt: skip
        return self.thumbs[key]


def value_mapping(
    thumb_values: str | None = None, rating_scale: str | None = None, reverse: bool = False
) -> ValueMapping:
    """``--thumb-values UP,DOWN[,CLEARED]`` (e.g. ``1,0``), ``--rating-scale LOW,HIGH``
    (e.g. ``0,10``) and ``--reverse-scale`` as a ``ValueMapping``."""
    thumbs = dict(_THUMBS)
    if thumb_values:
        parts = [p.strip().lower() for p in thumb_values.split(",")]
        if len(parts) not in (2, 3) or not all(parts) or len(set(parts)) != len(parts):
            raise UserError(f"--thumb-values {thumb_values!r}: expected UP,DOWN or "
                            "UP,DOWN,CLEARED (e.g. 1,0)")  # fmt: skip
        thumbs.update(zip(parts, (1, -1, 0), strict=False))
    low, high = 1.0, 5.0
    if rating_scale:
        try:
            low, high = (float(p) for p in rating_scale.split(","))
        except ValueError:
            message = f"--rating-scale {rating_scale!r}: expected LOW,HIGH, e.g. 0,10"
            raise UserError(message) from None
        if low >= high:
            raise UserError(f"--rating-scale {rating_scale!r}: LOW must be below HIGH")
    return ValueMapping(thumbs, bool(thumb_values), low, high, reverse)


@dataclass
class ImportReport:
    """What an import did: rows read, users written, events by status, rows skipped (with
    line numbers) and why."""

    source: str
    rows: int = 0
    events: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    user_ids: set[str] = field(default_factory=set)  # distinct users written, across batches

    @property
    def users(self) -> int:
        return len(self.user_ids)

    def bad(self, line: int, reason: str, category: str = "invalid row") -> None:
        self.skipped[category] += 1
        self.bad_rows.append((line, reason))

    def finish(self) -> ImportReport:
        self.bad_rows.sort()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "users": self.users,
                "events": dict(self.events), "skipped": dict(self.skipped),
                "warnings": self.warnings,
                "bad_rows": [{"line": n, "reason": r} for n, r in self.bad_rows]}  # fmt: skip


def record_rows(store: FeedbackStore, rows: list[tuple[int, dict]], report: ImportReport) -> None:
    """Record (line, event) rows; errors are reported against their line."""
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        results = store.record_events([event for _, event in chunk], create_users=True)
        for (line, event), result in zip(chunk, results, strict=True):
            if result.status != "error":
                report.events[result.status] += 1
                report.user_ids.add(event["user_id"])
            elif result.code == 410:
                report.bad(line, "user was deleted", "deleted user")
            else:
                report.bad(line, f"{result.field}: {result.message}")


# -- JSON lines ---------------------------------------------------------------------------------
def import_jsonl(store: FeedbackStore, path: str | Path) -> ImportReport:
    """One JSON object per line: a feedback event (the contract's event dict; unknown users are
    created), or a user ``{"user_id": ..., "profile": {...}}`` (a line without ``kind``)."""
    path = Path(path)
    report = ImportReport(str(path))
    pending: list[tuple[int, dict]] = []
    for line_no, line in enumerate(_open(path), 1):
        if not line.strip():
            continue
        report.rows += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            report.bad(line_no, f"not valid JSON: {exc.msg}")
            continue
        if not isinstance(obj, dict):
            report.bad(line_no, "expected a JSON object")
        elif "kind" in obj:
            pending.append((line_no, obj))
        else:
            record_rows(store, pending, report)  # keep the file's order: earlier events first
            pending = []
            _import_user_line(store, obj, line_no, report)
    record_rows(store, pending, report)
    return report.finish()


def _import_user_line(store: FeedbackStore, obj: dict, line_no: int, report: ImportReport) -> None:
    unknown = sorted(set(obj) - {"user_id", "external_id", "profile", "consent"})
    if unknown:
        report.bad(line_no, f"{unknown[0]}: unexpected field (a user line has user_id, "
                            "external_id, profile, consent; an event line has kind)")  # fmt: skip
        return
    try:
        report.user_ids.add(
            store.upsert_user(
                obj.get("user_id"),
                obj.get("profile"),
                obj.get("external_id"),
                consent=obj.get("consent"),
            )
        )
    except StoreError as exc:
        category = "deleted user" if exc.status_code == 410 else "invalid row"
        report.bad(line_no, str(exc), category)


def _open(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        yield from handle


# -- CSV ----------------------------------------------------------------------------------------
def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """``["rater=user_id", "score=rating", "age=profile.age_band"]`` -> column -> field."""
    mapping: dict[str, str] = {}
    for item in items:
        column, sep, target = item.partition("=")
        if not sep or not column or not target:
            raise UserError(f"--map {item!r}: expected COLUMN=FIELD, e.g. score=rating")
        base = target.split(".", 1)[0]
        if base not in CSV_FIELDS or (base == "profile" and target.count(".") > 1):
            raise UserError(
                f"--map {item!r}: unknown field {target!r}; fields: {', '.join(CSV_FIELDS)}, "
                "profile.KEY"
            )
        mapping[column] = target
    return mapping


def _check_mapping(mapping: Mapping[str, str], header: list[str], path: Path) -> None:
    missing = [col for col in mapping if col not in header]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header)})")
    targets = set(mapping.values())
    if "user_id" not in targets:
        raise UserError(f"{path}: map a column to user_id (e.g. --map user=user_id)")
    if {"chosen", "rejected"} & targets:
        if not {"chosen", "rejected"} <= targets:
            raise UserError(f"{path}: map both chosen and rejected (a pair of replies)")
        return
    if {"other_reply", "choice"} & targets:
        if not {"reply", "other_reply", "choice"} <= targets:
            raise UserError(f"{path}: an A/B choice needs reply, other_reply and choice columns")
        return
    if not targets & {"rating", "thumb"}:
        raise UserError(f"{path}: map a column to rating or thumb (e.g. --map score=rating), "
                        "or chosen + rejected, or reply + other_reply + choice")  # fmt: skip
    if not targets & {"reply", "item", "prompt"}:
        raise UserError(f"{path}: map a column to reply, item or prompt (the rated text)")


def _profile_value(text: str) -> Any:
    """CSV cell -> profile value: numbers stay numbers; 'a;b' becomes a list of strings."""
    if ";" in text:
        return [part.strip() for part in text.split(";") if part.strip()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _csv_value(cells: dict[str, str], values: ValueMapping) -> tuple[str, int, dict[str, str]]:
    """(kind, value, texts) of one CSV row: texts has reply (and other_reply); a prompt column
    without a reply column is the rated text itself."""
    if "chosen" in cells:
        if not cells["chosen"] or not cells["rejected"]:
            raise ValueError("chosen/rejected: empty")
        return "pairwise", 1, {"reply": cells["chosen"], "other_reply": cells["rejected"]}
    reply = cells.get("reply") or cells.get("item")
    if reply is None and "reply" not in cells and "item" not in cells:
        reply = cells.get("prompt")
    if not reply:
        raise ValueError("reply: empty (the rated text)")
    if "choice" in cells:
        choice = cells["choice"].strip().lower()
        if choice not in _CHOICES:
            raise ValueError(f"choice: {cells['choice']!r} is not A/B (a, b, 1, 2, left, right)")
        return "pairwise", _CHOICES[choice], {"reply": reply, "other_reply": cells["other_reply"]}
    if cells.get("rating", "").strip():
        return "rating", values.rating(cells["rating"]), {"reply": reply}
    if cells.get("thumb", "").strip():
        return "thumbs", values.thumb(cells["thumb"]), {"reply": reply}
    raise ValueError("rating/thumb: empty")


def _csv_event(
    store: FeedbackStore, cells: dict[str, str], default_prompt: str, values: ValueMapping
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(external user id, profile part, event dict) of one CSV row; raises ValueError."""
    external = cells.get("user_id", "").strip()
    if not external:
        raise ValueError("user_id: empty")
    kind, value, texts = _csv_value(cells, values)
    rated_prompt = "reply" in cells or "item" in cells or "chosen" in cells
    prompt = cells.get("prompt") if rated_prompt and cells.get("prompt") else default_prompt
    reply = texts["reply"]
    user_id = store.hasher.pseudonym(external)
    event = {"user_id": user_id, "kind": kind, "prompt": prompt or "", **texts,
             "value": value}  # fmt: skip
    for name in ("comment", "created_at"):
        if cells.get(name):
            event[name] = cells[name]
    if cells.get("reason_tags"):
        event["reason_tags"] = [t.strip() for t in cells["reason_tags"].split(";") if t.strip()]
    key = [external, event["prompt"], reply, kind, value, event.get("created_at")]
    key = json.dumps(key + ([texts["other_reply"]] if "other_reply" in texts else []))
    event["event_id"] = cells.get("event_id") or "csv_" + store.hasher.digest("csv", key)[:32]
    profile = {k.removeprefix("profile."): _profile_value(v.strip())
               for k, v in cells.items() if k.startswith("profile.") and v.strip()}  # fmt: skip
    return external, profile, event


def import_csv(
    store: FeedbackStore,
    path: str | Path,
    mapping: Mapping[str, str],
    *,
    default_prompt: str = "",
    values: ValueMapping | None = None,
) -> ImportReport:
    """Ratings or thumbs from a CSV. ``mapping``: column -> field (``user_id``, ``prompt``,
    ``reply`` or ``item``, ``rating`` or ``thumb``, optional ``event_id``, ``created_at``,
    ``comment``, ``reason_tags`` (';'-separated), ``profile.KEY`` or ``profile`` (key = the
    column name)); pairs as ``chosen`` + ``rejected``, or ``reply`` + ``other_reply`` +
    ``choice`` (A/B). ``default_prompt`` is the prompt of rows without a prompt column (without
    a reply column the prompt column is the rated item). ``values``: how cells become values."""
    path = Path(path)
    values = values or ValueMapping()
    report = ImportReport(str(path))
    lines = _open(path)
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    _check_mapping(mapping, header, path)
    targets = {col: (f"profile.{col}" if t == "profile" else t) for col, t in mapping.items()}
    rows: list[tuple[int, str, dict, dict]] = []
    last_line, cleared = 1, 0
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            report.rows += 1
            report.bad(last_line + 1, f"unreadable CSV: {exc}")
            break
        line_no, last_line = last_line + 1, reader.line_num
        report.rows += 1
        cells = {targets[col]: (raw.get(col) or "") for col in targets}
        try:
            external, profile, event = _csv_event(store, cells, default_prompt, values)
            FeedbackEventIn.model_validate(event)
        except ValueError as exc:
            reason = (
                "{}: {}".format(*first_error(exc)) if isinstance(exc, ValidationError) else str(exc)
            )
            report.bad(line_no, reason)
            continue
        rows.append((line_no, external, profile, event))
        cleared += event["kind"] == "thumbs" and event["value"] == 0
        if len(rows) >= BATCH:
            flush_external_rows(store, rows, report)
            rows = []
    flush_external_rows(store, rows, report)
    if cleared and not values.explicit_thumbs:
        report.warnings.append(
            f"{cleared} rows have thumb 0, stored as cleared thumbs (no vote); if 0 means thumbs "
            "down, import again with --thumb-values 1,0"
        )
    return report.finish()


def flush_external_rows(store: FeedbackStore, rows: list[tuple], report: ImportReport) -> None:
    """(line, external id, profile, event) rows: write their users (keyed hashes of the external
    ids, merged profiles), then their events."""
    profiles: dict[str, dict] = {}
    for _, external, profile, _ in rows:
        profiles.setdefault(external, {}).update(profile)
    refused: dict[str, str] = {}
    rows_in = [{"external_id": ext, "profile": prof or None} for ext, prof in profiles.items()]
    for external, result in zip(profiles, store.upsert_users(rows_in, merge_profile=True),
                                strict=True):  # fmt: skip
        if isinstance(result, StoreError):
            refused[external] = "deleted user" if result.status_code == 410 else str(result)
        else:
            report.user_ids.add(result["user_id"])
    events = []
    for line_no, external, _, event in rows:
        if external in refused:
            reason = refused[external]
            report.bad(line_no, reason if reason != "deleted user" else "user was deleted",
                       "deleted user" if reason == "deleted user" else "invalid row")  # fmt: skip
        else:
            events.append((line_no, event))
    record_rows(store, events, report)


# -- Polis --------------------------------------------------------------------------------------
def import_polis(
    store: FeedbackStore, folder: str | Path, *, pass_as: str = "abstain"
) -> ImportReport:
    """A Polis export folder (``votes.csv``, ``comments.csv``, ``participants-votes.csv``,
    ``summary.csv``): participants become users, statements become replies to the
    conversation's question, votes become thumbs (agree +1, disagree -1; pass 0 = abstain, or
    skipped with ``pass_as="skip"``, which then leaves a vote that a later pass withdrew as
    current), in time order, so a changed vote updates the current
    value and stays in the history. Polis's own opinion group is kept in the user's ``meta``
    (``polis_group_id``), not in the profile, so segmentation can be compared against it
    without using it.

    A folder with only ``participants-votes.csv`` (the participant x statement matrix) works
    too: each filled cell is a vote (no time, so no vote history), and statements missing from
    ``comments.csv`` are stored as "Polis statement N"."""
    folder = Path(folder)
    if pass_as not in ("abstain", "skip"):
        raise UserError(f"pass_as: must be abstain or skip, not {pass_as!r}")
    matrix = not (folder / "votes.csv").is_file()
    if matrix and not (folder / "participants-votes.csv").is_file():
        raise UserError(f"{folder}: no votes.csv or participants-votes.csv (expected a Polis "
                        "export folder)")  # fmt: skip
    if not matrix and not (folder / "comments.csv").is_file():
        raise UserError(f"{folder}: no comments.csv (expected a Polis export folder)")
    conv = folder.name
    report = ImportReport(str(folder))
    prompt = _polis_prompt(folder)
    replies = _polis_statements(store, folder, prompt, report)
    groups = _polis_groups(folder)
    if matrix:
        votes = _polis_matrix_votes(folder, report)
        for cid in sorted({v[3] for v in votes} - replies.keys()):
            replies[cid] = store.add_reply(prompt, f"Polis statement {cid}", policy="polis",
                                           generation={"polis_comment_id": cid})  # fmt: skip
    else:
        votes = _polis_votes(folder, report)
    voters = sorted({voter for _, _, voter, _, _ in votes} | set(groups), key=int)
    rows = [
        {"external_id": f"polis:{conv}:{voter}",
         "meta": {"source": "polis", "polis_conversation": conv,
                  "polis_group_id": groups.get(voter)}}
        for voter in voters
    ]  # fmt: skip
    users: dict[str, str] = {}
    for voter, result in zip(voters, store.upsert_users(rows), strict=True):
        if isinstance(result, StoreError):
            if result.status_code != 410:
                raise result
            continue
        users[voter] = result["user_id"]
        report.user_ids.add(result["user_id"])
    events = []
    for line_no, timestamp, voter, comment, vote in votes:
        if voter not in users:
            report.bad(line_no, "user was deleted", "deleted user")
        elif comment not in replies:
            report.bad(line_no, f"comment-id: no statement {comment} in comments.csv")
        elif vote == 0 and pass_as == "skip":
            report.skipped["pass vote"] += 1
        else:
            key = f"{conv}:{voter}:{comment}:{timestamp}"
            event = {"event_id": "polis_" + store.hasher.digest("polis", key)[:32],
                     "user_id": users[voter], "kind": "thumbs", "reply_id": replies[comment],
                     "value": vote}  # fmt: skip
            if timestamp is not None:
                event["created_at"] = datetime.fromtimestamp(timestamp / 1000, UTC)
            events.append((line_no, event))
    record_rows(store, events, report)
    return report.finish()


def _polis_prompt(folder: Path) -> str:
    summary = folder / "summary.csv"
    if summary.is_file():
        with summary.open(encoding="utf-8", newline="") as handle:
            info = {row[0]: row[1] for row in csv.reader(handle) if len(row) >= 2}
        text = info.get("conversation-description") or info.get("topic")
        if text:
            return text
    return f"Polis conversation {folder.name}"


def _polis_statements(store: FeedbackStore, folder: Path, prompt: str, report) -> dict[int, str]:
    """comment-id -> reply_id."""
    replies: dict[int, str] = {}
    if not (folder / "comments.csv").is_file():
        return replies
    with (folder / "comments.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            try:
                cid = int(row["comment-id"])
                generation = {"polis_comment_id": cid, "moderated": int(row.get("moderated") or 0)}
                replies[cid] = store.add_reply(prompt, row["comment-body"], policy="polis",
                                               generation=generation)  # fmt: skip
            except (KeyError, ValueError, TypeError, StoreError) as exc:
                report.bad(reader.line_num, f"comments.csv: {exc}")
    return replies


def _polis_groups(folder: Path) -> dict[str, int | None]:
    """participant -> Polis group id (None when Polis did not place them)."""
    path = folder / "participants-votes.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        return {
            row["participant"]: int(row["group-id"]) if row.get("group-id") else None
            for row in csv.DictReader(handle)
        }


def _polis_votes(folder: Path, report: ImportReport) -> list[tuple[int, int, str, int, int]]:
    """(line, timestamp ms, voter, comment, vote) sorted by time (stable for ties)."""
    votes = []
    with (folder / "votes.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            report.rows += 1
            try:
                vote = int(row["vote"])
                if vote not in (-1, 0, 1):
                    raise ValueError(f"vote {vote} is not -1, 0 or 1")
                votes.append((reader.line_num, int(row["timestamp"]), str(int(row["voter-id"])),
                              int(row["comment-id"]), vote))  # fmt: skip
            except (KeyError, ValueError, TypeError) as exc:
                report.bad(reader.line_num, f"votes.csv: {exc}")
    votes.sort(key=lambda v: v[1])
    return votes


def _polis_matrix_votes(folder: Path, report: ImportReport) -> list[tuple]:
    """(line, None, voter, comment, vote) of every filled cell of participants-votes.csv."""
    votes = []
    with (folder / "participants-votes.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        columns = [(i, int(name)) for i, name in enumerate(header) if name.strip().isdigit()]
        if "participant" not in header or not columns:
            raise UserError(f"{folder}/participants-votes.csv: expected a participant column and "
                            "one column per statement id")  # fmt: skip
        who = header.index("participant")
        for row in reader:
            for i, comment in columns:
                cell = row[i].strip() if i < len(row) else ""
                if not cell:
                    continue
                report.rows += 1
                try:
                    vote = int(float(cell))
                    if vote not in (-1, 0, 1):
                        raise ValueError(f"vote {cell} is not -1, 0 or 1")
                    votes.append((reader.line_num, None, str(int(row[who])), comment, vote))
                except ValueError as exc:
                    report.bad(reader.line_num, f"participants-votes.csv: {exc}")
    return votes


IMPORTERS = ("jsonl", "csv", "polis")
