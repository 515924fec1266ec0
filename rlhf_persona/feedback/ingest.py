"""The write path of feedback events: validate, resolve, deduplicate, insert, move "current".

This is the hot path (simulated users and the HTTP batch endpoint write thousands of events a
second), so it talks to the database in bulk: a handful of statements per batch, whatever its
size (one ``SELECT ... IN`` per lookup, one ``executemany`` per insert), with plain driver SQL
instead of SQLAlchemy expressions, whose per-row parameter processing dominated the cost.
The user and tombstone lookups (one query per batch) are those the whole store shares
(``StoreSession``); the rest of the store uses SQLAlchemy Core.

Steps for a batch (one transaction): users (create them if asked, never tombstoned ones) ->
replies (by content id; ids given by the client must exist; a pair must share its prompt) ->
event ids seen before (``duplicate`` when the content is the same, 409 when it is not) -> insert
new replies and the events -> upsert ``feedback_current`` where the event is not older than the
current value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError

from rlhf_persona.feedback.errors import Conflict, Gone, InvalidInput, NotFound, StoreError
from rlhf_persona.feedback.privacy import mask_pii
from rlhf_persona.feedback.schemas import FeedbackEventIn, first_error, prompt_hash, reply_id_for
from rlhf_persona.feedback.session import IN_CHUNK, StoreSession
from rlhf_persona.feedback.tables import as_utc, utcnow

Status = Literal["created", "duplicate", "updated", "error"]
_REUSED = Conflict("this event id was already used for a different event", "event_id")


@dataclass(slots=True)  # not frozen: a frozen init is several times slower on the hot path
class EventResult:
    """What happened to one event. ``code`` is the HTTP status of an error (404 unknown id,
    409 reused event id, 410 deleted user, 422 invalid), ``field`` the input it is about."""

    event_id: str | None
    status: Status
    message: str | None = None
    field: str | None = None
    code: int | None = None
    reply_id: str | None = None
    other_reply_id: str | None = None

    def __getitem__(self, key: str) -> Any:  # results read like dicts too: result["status"]
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (orjson also serialises the dataclass itself, with nulls)."""
        return {k: v for k in _RESULT_FIELDS if (v := getattr(self, k)) is not None}

    @classmethod
    def error(cls, event_id: str | None, exc: StoreError) -> EventResult:
        return cls(event_id, "error", exc.detail, exc.field, exc.status_code)


_RESULT_FIELDS = tuple(EventResult.__dataclass_fields__)


@dataclass(slots=True)
class _Item:
    """An event on its way in: validated input plus what the batch resolved for it."""

    index: int
    ev: FeedbackEventIn
    created_at: datetime
    comment: str | None
    prompt_hash: str | None
    reply_id: str
    other_reply_id: str | None
    payload_hash: str
    user_pk: int = 0
    reply_pk: int = 0
    other_pk: int | None = None
    event_pk: int = 0

    def current_key(self) -> tuple[int, int, int, str]:
        # A pair is one choice whichever reply came first: the key holds it in canonical order.
        if self.other_pk is None:
            return (self.user_pk, self.reply_pk, 0, self.ev.kind)
        low, high = sorted((self.reply_pk, self.other_pk))
        return (self.user_pk, low, high, self.ev.kind)


class _Sql:
    """Driver-level SQL for SQLite (``?`` placeholders, text timestamps, JSON as text) and
    PostgreSQL via psycopg (``%s``, timestamptz, JSONB), on the DBAPI cursor of a connection
    whose transaction SQLAlchemy manages."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn  # for the lookups the store shares (``StoreSession``)
        self.pg = conn.dialect.name == "postgresql"
        self._last_ts: datetime | None = None
        self._last_text = ""
        self.cursor = conn.connection.dbapi_connection.cursor()
        self.dbapi = conn.dialect.loaded_dbapi
        if self.pg:
            from psycopg.types.json import Jsonb

            self._jsonb = Jsonb

    def run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._call(self.cursor.execute, sql, params)

    def many(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            self._call(self.cursor.executemany, sql, rows)

    def _call(self, method: Callable, sql: str, params: Any) -> Any:
        sql = sql.replace("?", "%s") if self.pg else sql
        try:
            method(sql, params)
        except self.dbapi.Error as exc:  # as SQLAlchemy would raise it (IntegrityError, ...)
            raise sa.exc.DBAPIError.instance(sql, None, exc, self.dbapi.Error) from exc
        return self.cursor

    def select_in(self, sql: str, values: Sequence[Any], width: int = 1) -> list[tuple]:
        """Run ``sql`` with ``{marks}`` filled by placeholders for ``values``, in chunks: an
        IN list, or for ``width`` > 1 the rows of a ``VALUES`` list (joined in a CTE, which
        both databases answer from the index; a row-value ``IN`` made SQLite scan)."""
        out: list[tuple] = []
        one = "?" if width == 1 else "(" + ",".join("?" * width) + ")"
        step = IN_CHUNK // width
        for start in range(0, len(values), step):
            chunk = values[start : start + step]
            params = chunk if width == 1 else tuple(chain.from_iterable(chunk))
            marks = ",".join([one] * len(chunk))
            out.extend(self.run(sql.format(marks=marks), tuple(params)).fetchall())
        return out

    def insert_new(
        self, table: str, columns: str, key: str, rows: list[tuple], *, per_row: bool = False
    ) -> dict:
        """Insert ``rows`` into ``table`` except those whose unique ``key`` column is stored
        already; returns key -> id of the rows inserted.

        A multi-row ``VALUES ... RETURNING``, in chunks, except on SQLite with ``per_row``: one
        cached single-row statement for every row (a multi-row VALUES is compiled anew for each
        batch). Measured per row: replies (no foreign keys) 16 -> 11 us with ``per_row``,
        events (three foreign keys, checked per statement) 14 -> 18.5 us: so only replies."""
        if not rows:
            return {}
        one = "(" + ",".join("?" * len(rows[0])) + ")"
        insert = f"INSERT INTO {table} ({columns}) VALUES {{marks}} ON CONFLICT ({key}) DO NOTHING"
        if per_row and not self.pg:
            # This transaction holds the write lock: its new rows are those past the largest id.
            top = self.run(f"SELECT max(id) FROM {table}").fetchone()[0] or 0
            self.many(insert.format(marks=one), rows)
            return dict(self.run(f"SELECT {key}, id FROM {table} WHERE id > ?", (top,)))
        out: dict = {}
        step = max(1, 9000 // len(rows[0]))
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            marks = ",".join([one] * len(chunk))
            out.update(
                self.run(insert.format(marks=marks) + f" RETURNING {key}, id", tuple(chain(*chunk)))
            )
        return out

    def ts(self, value: datetime) -> Any:
        """A timestamp parameter: as is for psycopg; for SQLite the UTC text SQLAlchemy's
        DateTime writes and reads (most events of a batch share one time: converted once)."""
        if self.pg:
            return value
        if value is not self._last_ts:
            self._last_ts = value
            self._last_text = (
                value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
            )
        return self._last_text

    def ts_in(self, value: Any) -> datetime:
        return as_utc(value if isinstance(value, datetime) else datetime.fromisoformat(value))

    def json(self, value: Any) -> Any:
        if value is None:
            return None
        return self._jsonb(value) if self.pg else json.dumps(value, ensure_ascii=False)


def record_events(db: StoreSession, events: Iterable[Any], create_users: bool) -> list[EventResult]:
    """See ``FeedbackStore.record_events``."""
    events = _validated(list(events))
    results: list[EventResult | None] = [None] * len(events)
    pending: list[_Item] = []
    first_of: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    now = utcnow()
    for index, raw in enumerate(events):
        item = _prepare(index, raw, now, results)
        if item is None:
            continue
        first = first_of.get(item.ev.event_id)
        if first is not None:  # the same id twice in one batch (or one group commit)
            repeats.append((item, first))
            continue
        first_of[item.ev.event_id] = index
        pending.append(item)
    for start in range(0, len(pending), db.batch_size):
        _record_chunk(db, pending[start : start + db.batch_size], results, create_users)
    hashes = {it.index: it.payload_hash for it in pending}
    for item, first in repeats:
        if hashes[first] == item.payload_hash:
            results[item.index] = _repeat(results[first])
        else:  # the id is taken by the first one, as it would be across calls
            results[item.index] = EventResult.error(item.ev.event_id, _REUSED)
    return results  # type: ignore[return-value]


_EVENT_LIST = TypeAdapter(list[FeedbackEventIn])


def _validated(events: list[Any]) -> list[Any]:
    """Validate a batch of dicts in one call when it is all valid (the common case); otherwise
    leave it to ``_prepare`` to answer each event on its own."""
    if not events or all(isinstance(ev, FeedbackEventIn) for ev in events):
        return events
    try:
        return _EVENT_LIST.validate_python(events)
    except ValidationError:
        return events


def _prepare(index: int, raw: Any, now: datetime, results: list) -> _Item | None:
    if not isinstance(raw, FeedbackEventIn | Mapping):
        results[index] = EventResult(None, "error", "expected an event object", "event", 422)
        return None
    try:
        ev = raw if isinstance(raw, FeedbackEventIn) else FeedbackEventIn.model_validate(raw)
    except ValidationError as exc:
        field, message = first_error(exc)
        event_id = raw.get("event_id") if isinstance(raw, Mapping) else None
        event_id = event_id if isinstance(event_id, str) else None
        results[index] = EventResult(event_id, "error", message, field, 422)
        return None
    phash = prompt_hash(ev.prompt) if ev.prompt is not None else None
    rid = ev.reply_id or reply_id_for(ev.prompt, ev.reply, phash)
    orid = ev.other_reply_id
    if orid is None and ev.other_reply is not None:
        orid = reply_id_for(ev.prompt, ev.other_reply, phash)
    comment = mask_pii(ev.comment)
    if ev.reason_tags:  # free text too (a tag can be typed by the user)
        ev.reason_tags = [mask_pii(tag) for tag in ev.reason_tags]
    # What makes two events "the same" for idempotency (the time of receipt does not).
    payload = "\x1f".join(
        map(str, (ev.user_id, ev.kind, rid, orid, ev.value, ev.reason_tags, comment))
    )
    return _Item(
        index=index,
        ev=ev,
        created_at=ev.created_at or now,
        comment=comment,
        prompt_hash=phash,
        reply_id=rid,
        other_reply_id=orid,
        payload_hash=hashlib.sha256(payload.encode()).hexdigest(),
    )


def _repeat(first: EventResult | None) -> EventResult:
    """A retry within one call (same id, same content) is answered as the first one."""
    if first is None or first.status == "error":
        return first  # type: ignore[return-value]
    return EventResult(
        first.event_id, "duplicate", reply_id=first.reply_id, other_reply_id=first.other_reply_id
    )


def _record_chunk(db: StoreSession, items: list[_Item], results: list, create: bool) -> None:
    try:
        with db.transaction() as conn:
            written = _write(db, _Sql(conn), items, results, create)
    except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
        # Something only the database caught (e.g. a concurrent writer): retry one event per
        # transaction, so that one bad event cannot sink the others.
        if len(items) > 1:
            for item in items:
                _record_chunk(db, [item], results, create)
            return
        message = f"rejected by the database: {type(exc.orig).__name__}"
        results[items[0].index] = EventResult(items[0].ev.event_id, "error", message, None, 409)
        return
    # Answered after the commit, outside the write lock that other writers wait on.
    for it, (status, message) in written:
        results[it.index] = EventResult(
            it.ev.event_id, status, message, reply_id=it.reply_id, other_reply_id=it.other_reply_id
        )


def _write(
    db: StoreSession, sql: _Sql, items: list[_Item], results: list, create: bool
) -> list[tuple[_Item, tuple[Status, str | None]]]:
    """The transaction's work; returns each written item with its (status, message). Events
    that fail are answered in ``results`` right away."""

    def fail(item: _Item, exc: StoreError) -> None:
        results[item.index] = EventResult.error(item.ev.event_id, exc)

    items = _resolve_users(db, sql, items, create, fail)
    items = _resolve_replies(sql, items, fail)
    items = _drop_seen(sql, items, results, fail)
    if not items:
        return []
    fresh = _insert_replies(sql, items)
    items = _insert_events(sql, items, results, fail)
    statuses = _update_current(sql, items, fresh)
    return [(it, statuses[it.index]) for it in items]


def _insert_events(sql: _Sql, items: list[_Item], results: list, fail) -> list[_Item]:
    """Insert the events; returns those actually inserted. A concurrent writer may have stored
    the same event id in the meantime (PostgreSQL): that one is answered like a retry."""
    received = sql.ts(utcnow())
    rows = [
        (it.ev.event_id, it.user_pk, it.ev.kind, it.reply_pk, it.other_pk, it.ev.value,
         sql.json(it.ev.reason_tags or None), it.comment, sql.ts(it.created_at), received,
         it.payload_hash)
        for it in items
    ]  # fmt: skip
    columns = (
        "event_id, user_pk, kind, reply_pk, other_reply_pk, value, reason_tags, comment,"
        " created_at, received_at, payload_hash"
    )
    inserted = sql.insert_new("feedback_events", columns, "event_id", rows)
    for it in items:
        it.event_pk = inserted.get(it.ev.event_id, 0)
    if len(inserted) == len(items):
        return items
    lost = [it for it in items if it.ev.event_id not in inserted]
    _drop_seen(sql, lost, results, fail)  # answers each as duplicate or conflict
    return [it for it in items if it.ev.event_id in inserted]


def _resolve_users(
    db: StoreSession, sql: _Sql, items: list[_Item], create: bool, fail
) -> list[_Item]:
    ids = sorted({it.ev.user_id for it in items})
    found = db.user_pks(sql.conn, ids)
    missing = [uid for uid in ids if uid not in found]
    gone: set[str] = set()
    if missing:
        by_hash = {db.hasher.user_id(uid): uid for uid in missing}
        gone = {by_hash[h] for h in db.tombstoned(sql.conn, list(by_hash))}
        new = [uid for uid in missing if uid not in gone]
        if create and new:
            now = sql.ts(utcnow())
            sql.many(
                "INSERT INTO users (user_id, profile, meta, consent, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (user_id) DO NOTHING",
                [(uid, sql.json({}), sql.json({}), True, now, now) for uid in new],
            )
            found.update(db.user_pks(sql.conn, new))
    kept = []
    for it in items:
        pk = found.get(it.ev.user_id)
        if it.ev.user_id in gone or (pk is not None and pk < 0):
            fail(it, Gone(f"user {it.ev.user_id!r} was deleted", "user_id"))
        elif pk is None:
            fail(it, NotFound(f"no user {it.ev.user_id!r}", "user_id"))
        else:
            it.user_pk = pk
            kept.append(it)
    return kept


def _resolve_replies(sql: _Sql, items: list[_Item], fail: Callable) -> list[_Item]:
    """Look up the replies given by id only (those given as texts are created or found by
    ``_insert_replies``: their content id fixes their prompt)."""
    wanted = sorted(
        {it.reply_id for it in items if it.ev.reply is None}
        | {it.other_reply_id for it in items if it.ev.other_reply is None} - {None}
    )
    query = "SELECT id, reply_id, prompt_hash FROM replies WHERE reply_id IN ({marks})"
    known = {rid: (pk, phash) for pk, rid, phash in sql.select_in(query, wanted)}
    kept = []
    for it in items:
        problem = _reply_problem(it, known)
        if problem is not None:
            fail(it, problem)
            continue
        it.reply_pk = known[it.reply_id][0] if it.reply_id in known else 0
        it.other_pk = known[it.other_reply_id][0] if it.other_reply_id in known else None
        kept.append(it)
    return kept


def _reply_problem(it: _Item, known: dict[str, tuple[int, str]]) -> StoreError | None:
    ev = it.ev
    sides = [(it.reply_id, ev.reply, "reply_id")]
    if it.other_reply_id is not None:
        other_field = "other_reply" if ev.other_reply is not None else "other_reply_id"
        sides.append((it.other_reply_id, ev.other_reply, other_field))
    hashes = []
    for rid, text, field in sides:
        if rid in known:
            hashes.append(known[rid][1])
        elif text is not None:
            hashes.append(it.prompt_hash)
        else:
            return NotFound(f"no reply {rid!r}", field)
    if len(sides) == 2:
        if it.other_reply_id == it.reply_id:
            return InvalidInput("must be a different reply than reply", sides[1][2])
        if hashes[0] != hashes[1]:
            return InvalidInput(
                "a pairwise choice needs two replies to the same prompt", sides[1][2]
            )
    return None


def _drop_seen(sql: _Sql, items: list[_Item], results: list, fail: Callable) -> list[_Item]:
    query = "SELECT event_id, payload_hash FROM feedback_events WHERE event_id IN ({marks})"
    seen = dict(sql.select_in(query, [it.ev.event_id for it in items]))
    kept = []
    for it in items:
        previous = seen.get(it.ev.event_id)
        if previous is None:
            kept.append(it)
        elif previous == it.payload_hash:
            results[it.index] = EventResult(
                it.ev.event_id, "duplicate", reply_id=it.reply_id, other_reply_id=it.other_reply_id
            )
        else:
            fail(it, _REUSED)
    return kept


def _insert_replies(sql: _Sql, items: list[_Item]) -> set[int]:
    """Create the replies given as text that do not exist yet and fill in every item's pks;
    returns the pks created here (no current value can point at those yet)."""
    new: dict[str, tuple] = {}
    now = sql.ts(utcnow())
    for it in items:
        ev = it.ev
        for rid, text, pk in ((it.reply_id, ev.reply, it.reply_pk),
                              (it.other_reply_id, ev.other_reply, it.other_pk)):  # fmt: skip
            if rid is not None and not pk and rid not in new:
                new[rid] = (rid, it.prompt_hash, ev.prompt, text, ev.policy, ev.segment, now)
    if not new:
        return set()
    columns = "reply_id, prompt_hash, prompt, text, policy, segment, created_at"
    pks = sql.insert_new("replies", columns, "reply_id", list(new.values()), per_row=True)
    fresh = set(pks.values())
    if len(pks) < len(new):  # stored before (or by a concurrent writer): look them up
        query = "SELECT reply_id, id FROM replies WHERE reply_id IN ({marks})"
        pks.update(sql.select_in(query, [rid for rid in new if rid not in pks]))
    for it in items:
        it.reply_pk = it.reply_pk or pks[it.reply_id]
        if it.other_reply_id is not None and not it.other_pk:
            it.other_pk = pks[it.other_reply_id]
    return fresh


def _update_current(
    sql: _Sql, items: list[_Item], fresh: set[int]
) -> dict[int, tuple[Status, str | None]]:
    """Point each (user, reply, other, kind) at its latest event; returns index -> status.
    Keys with a reply created in this transaction (``fresh``) have no current value yet."""
    keys = sorted({k for it in items if (k := it.current_key())[1] not in fresh
                   and k[2] not in fresh})  # fmt: skip
    query = (
        "WITH k (u, r, o, kd) AS (VALUES {marks})"
        " SELECT c.user_pk, c.reply_pk, c.other_key, c.kind, c.created_at"
        " FROM k JOIN feedback_current c ON c.user_pk = k.u AND c.reply_pk = k.r"
        " AND c.other_key = k.o AND c.kind = k.kd"
    )  # a row-value IN (...) made SQLite scan the table; the join uses the primary key
    current = {tuple(row[:4]): sql.ts_in(row[4]) for row in sql.select_in(query, keys, width=4)}
    statuses: dict[int, tuple[Status, str | None]] = {}
    final: dict[tuple, _Item] = {}
    for it in items:
        key = it.current_key()
        previous = current.get(key)
        if previous is not None and it.created_at < previous:
            statuses[it.index] = ("created", "older than the current value; kept in history")
            continue
        statuses[it.index] = ("created", None) if previous is None else ("updated", None)
        current[key] = it.created_at
        final[key] = it
    now = sql.ts(utcnow())
    sql.many(
        "INSERT INTO feedback_current"
        " (user_pk, reply_pk, other_key, kind, event_pk, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?) ON CONFLICT (user_pk, reply_pk, other_key, kind) DO UPDATE SET"
        " event_pk = excluded.event_pk, created_at = excluded.created_at,"
        " updated_at = excluded.updated_at"
        " WHERE feedback_current.created_at <= excluded.created_at",
        [(*key, it.event_pk, sql.ts(it.created_at), now) for key, it in final.items()],
    )
    return statuses
