"""Import feedback that other tools wrote: TRL / Hugging Face datasets, OpenAI-style chat logs,
Argilla and Label Studio exports, Langfuse / LangSmith score dumps.

Each format is a parser from one record (a dict) to events ``(user, event)``: ``user`` is
``("id", x)`` for a store user id (a ``user_id`` column, as in this project's own exports and
JSON lines) or ``("external", x)`` for another tool's user or annotator id, which is stored
only as a keyed hash like the CSV importer's. Records without a user go to ``default_user``.
Everything then goes through ``FeedbackStore.record_events`` (validation, idempotency:
event ids derive from the record, so importing a file twice stores nothing new).

Chat messages become the store's texts: the prompt is the conversation before the rated reply
(its one user message, or ``role: content`` lines when there are several turns; system messages
are left out), the reply the assistant's message.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from rlhf_persona.errors import UserError
from rlhf_persona.feedback.importers import (
    BATCH,
    ImportReport,
    ValueMapping,
    flush_external_rows,
    record_rows,
)
from rlhf_persona.feedback.store import FeedbackStore

FORMATS = ("trl", "messages", "argilla", "label-studio", "scores")
DEFAULT_USER = "imported"
PROMPT_KEYS = ("prompt", "instruction", "question", "input", "query")
REPLY_KEYS = ("response", "completion", "answer", "output", "reply", "generation", "text")
Event = tuple[tuple[str, str] | None, dict[str, Any]]


# -- reading ------------------------------------------------------------------------------------
def read_records(path: Path, report: ImportReport) -> Iterator[tuple[int, Any]]:
    """(line or row number, record) of a JSON lines file, a JSON array (or an object holding
    one), or anything ``datasets`` loads: Parquet / CSV files, a ``load_dataset`` folder (such
    as this project's exports) or a ``save_to_disk`` folder."""
    if path.is_file() and path.suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as exc:
                        report.rows += 1
                        report.bad(line_no, f"not valid JSON: {exc.msg}")
        return
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        yield from enumerate(data, 1)
        return
    yield from enumerate(_dataset_rows(path), 1)


def _dataset_rows(path: Path) -> Iterator[dict]:
    import datasets

    from rlhf_persona.feedback.export_files import quiet_datasets

    # datasets keys its cache of a local folder by the folder's name and file names, not its
    # path or contents: a second folder called "pref" would read back the first one's rows.
    fresh = datasets.DownloadMode.FORCE_REDOWNLOAD
    try:
        with quiet_datasets():
            if path.is_dir() and (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
            elif path.is_dir():
                loaded = datasets.load_dataset(str(path), download_mode=fresh)
            elif path.suffix in (".parquet", ".csv"):
                loaded = datasets.load_dataset(path.suffix[1:], data_files=str(path),
                                               download_mode=fresh)  # fmt: skip
            else:
                raise UserError(f"{path}: expected .jsonl, .json, .parquet, .csv or a folder")
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as exc:
        raise UserError(f"{path}: cannot load as a dataset: {str(exc).splitlines()[0]}") from None
    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for split in splits:
        yield from split


# -- texts and values ---------------------------------------------------------------------------
def _content(message: Mapping) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    if not isinstance(content, str):
        raise ValueError("message content: expected text")
    return content


def text_of(value: Any, what: str) -> str:
    """A store text from a string, a chat message or a list of messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "content" in value:
        return _content(value)
    if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
        turns = [m for m in value if m.get("role") != "system"] or value
        if len(turns) == 1:
            return _content(turns[0])
        return "\n".join(f"{m.get('role', 'user')}: {_content(m)}" for m in turns)
    raise ValueError(f"{what}: expected text or chat messages, not {type(value).__name__}")


def _thumb(value: Any, values: ValueMapping) -> int:
    if isinstance(value, bool):
        return 1 if value else -1
    if isinstance(value, float) and value == int(value):
        value = int(value)
    return values.thumb(str(value))


def _judgement(source: Mapping, values: ValueMapping) -> dict[str, Any]:
    """kind and value from a record's ``rating`` / ``thumb`` / ``label`` (and its comment)."""
    extra = {"comment": source["comment"]} if isinstance(source.get("comment"), str) else {}
    for key in ("rating", "stars"):
        if source.get(key) is not None:
            return {"kind": "rating", "value": values.rating(str(source[key])), **extra}
    for key in ("thumb", "thumbs", "label", "liked", "feedback"):
        if source.get(key) is not None and not isinstance(source[key], Mapping):
            return {"kind": "thumbs", "value": _thumb(source[key], values), **extra}
    raise ValueError("no feedback: expected a rating, thumb or label")


def _first(record: Mapping, keys: tuple[str, ...], what: str) -> Any:
    for key in keys:
        if record.get(key) not in (None, ""):
            return record[key]
    raise ValueError(f"{what}: none of the fields {', '.join(keys)}")


def _user_ref(record: Mapping, *external_keys: str) -> tuple[str, str] | None:
    """("id", the ``user_id`` column) or ("external", the first of ``external_keys``)."""
    if record.get("user_id") not in (None, ""):
        return ("id", str(record["user_id"]))
    return _external(record, *external_keys)


def _external(record: Mapping, *keys: str) -> tuple[str, str] | None:
    for key in keys:
        if record.get(key) not in (None, ""):
            return ("external", str(record[key]))
    return None


# -- TRL / HF datasets --------------------------------------------------------------------------
def parse_trl(record: Mapping, values: ValueMapping) -> list[Event]:
    """Preference (prompt/chosen/rejected, also with the prompt implicit in the conversations),
    unpaired preference / KTO (prompt/completion/label) and ratings (prompt/completion/rating)
    rows, standard or conversational. ``margin`` and ``segment_id`` are not stored (segments
    are fitted again). A pair across two prompts (``rejected_prompt``) is a thumbs up and a
    thumbs down, as it was made."""
    user = _user_ref(record)
    if "chosen" in record and "rejected" in record:
        if record.get("prompt") in (None, ""):
            from trl.data_utils import extract_prompt

            record = {**record, **extract_prompt(dict(record))}
        prompt = text_of(record["prompt"], "prompt")
        chosen, rejected = text_of(record["chosen"], "chosen"), text_of(record["rejected"],
                                                                          "rejected")  # fmt: skip
        other = record.get("rejected_prompt")
        if other not in (None, "") and text_of(other, "rejected_prompt") != prompt:
            other = text_of(other, "rejected_prompt")
            return [
                (user, {"kind": "thumbs", "prompt": prompt, "reply": chosen, "value": 1}),
                (user, {"kind": "thumbs", "prompt": other, "reply": rejected, "value": -1}),
            ]
        return [(user, {"kind": "pairwise", "prompt": prompt, "reply": chosen,
                        "other_reply": rejected, "value": 1})]  # fmt: skip
    if "completion" in record and ("label" in record or "rating" in record):
        texts = {"prompt": text_of(record.get("prompt") or "", "prompt"),
                 "reply": text_of(record["completion"], "completion")}  # fmt: skip
        return [(user, {**texts, **_judgement(record, values)})]
    raise ValueError("expected the columns prompt/chosen/rejected, prompt/completion/label or "
                     "prompt/completion/rating")  # fmt: skip


# -- OpenAI-style messages ----------------------------------------------------------------------
def parse_messages(record: Mapping, values: ValueMapping) -> list[Event]:
    """``{"messages": [...], "feedback": {"thumb": 1}}`` (or ``rating`` / ``label``, also at the
    top level or in ``metadata``): the last assistant message is the rated reply. OpenAI's
    preference fine-tuning rows (``input.messages``, ``preferred_output``,
    ``non_preferred_output``) become A/B choices. The user: ``user_id`` (a store id), else
    OpenAI's ``user`` or ``metadata.user_id`` (external ids)."""
    meta = record.get("metadata") if isinstance(record.get("metadata"), Mapping) else {}
    user = _user_ref(record, "user") or _external(meta, "user_id", "user")
    if "preferred_output" in record:
        turns = (record.get("input") or {}).get("messages")
        return [(user, {"kind": "pairwise", "prompt": text_of(turns, "input.messages"),
                        "reply": text_of(record["preferred_output"], "preferred_output"),
                        "other_reply": text_of(record["non_preferred_output"],
                                               "non_preferred_output"), "value": 1})]  # fmt: skip
    turns = record.get("messages")
    if not isinstance(turns, list) or not turns:
        raise ValueError("messages: expected a list of chat messages")
    last = max((i for i, m in enumerate(turns) if isinstance(m, Mapping)
                and m.get("role") == "assistant"), default=None)  # fmt: skip
    if last is None or last == 0:
        raise ValueError("messages: no assistant reply after a user message")
    feedback = record.get("feedback")
    source = feedback if isinstance(feedback, Mapping) else {**meta, **record}
    event = {"prompt": text_of(turns[:last], "messages"), "reply": _content(turns[last]),
             **_judgement(source, values)}  # fmt: skip
    return [(user, event)]


# -- Argilla ------------------------------------------------------------------------------------
def _argilla_responses(record: Mapping) -> dict[str, list[tuple[Any, Any, Any]]]:
    """question -> [(user, value, status)] from Argilla 2's nested or flattened records
    (``records.to_list()``, ``to_json``, ``to_datasets``) or Argilla 1's HF exports."""
    found: dict[str, list[tuple[Any, Any, Any]]] = defaultdict(list)
    nested = record.get("responses")
    if isinstance(nested, Mapping):
        for question, answers in nested.items():
            for a in answers or []:
                found[question].append((a.get("user_id"), a.get("value"), a.get("status")))
    for key, answers in record.items():
        if key.endswith(".responses") and isinstance(answers, list):
            q = key.removesuffix(".responses")
            users = record.get(f"{q}.responses.users") or [None] * len(answers)
            status = record.get(f"{q}.responses.status") or [None] * len(answers)
            found[q].extend(zip(users, answers, status, strict=False))
        elif (
            isinstance(answers, list)
            and answers
            and all(isinstance(a, Mapping) and "value" in a and "user_id" in a for a in answers)
        ):  # Argilla 1: one column per question, a list of responses
            found[key].extend((a["user_id"], a["value"], a.get("status")) for a in answers)
    return found


def parse_argilla(record: Mapping, values: ValueMapping) -> list[Event]:
    """Every submitted response of every annotator: a number is a rating (see
    ``--rating-scale``), a label a thumb (good / bad, yes / no, ...), a ranking of reply fields
    A/B choices of the first-ranked reply over each other. Text answers are left out."""
    fields = record["fields"] if isinstance(record.get("fields"), Mapping) else record
    prompt = text_of(_first(fields, PROMPT_KEYS, "prompt field"), "prompt")
    events: list[Event] = []
    for question, answers in _argilla_responses(record).items():
        for annotator, value, status in answers:
            if status not in (None, "submitted") or value is None:
                continue
            user = ("external", str(annotator)) if annotator else None
            base = {"prompt": prompt, "meta_question": question}
            if isinstance(value, list):  # ranking: [{"value": field, "rank": n}, ...]
                ranked = sorted(value, key=lambda r: r.get("rank") or 0)
                best = text_of(fields[ranked[0]["value"]], "ranked field")
                events += [(user, {**base, "kind": "pairwise", "reply": best, "value": 1,
                                   "other_reply": text_of(fields[r["value"]], "ranked field")})
                           for r in ranked[1:]]  # fmt: skip
                continue
            reply = text_of(_first(fields, REPLY_KEYS, "reply field"), "reply")
            key = "rating" if isinstance(value, int | float) and not isinstance(value, bool) \
                else "thumb"  # fmt: skip
            try:
                events.append((user, {**base, "reply": reply, **_judgement({key: value}, values)}))
            except ValueError:
                if key == "rating":
                    raise
                continue  # free text, or a label that is not a thumb
    if not events:
        raise ValueError("no submitted rating, label or ranking response")
    return events


# -- Label Studio -------------------------------------------------------------------------------
def parse_label_studio(record: Mapping, values: ValueMapping) -> list[Event]:
    """A task of Label Studio's JSON export: per annotation (not cancelled), ``rating`` results
    are ratings (``--rating-scale`` for other maxima), ``choices`` thumbs (Good / Bad, ...) and
    ``pairwise`` results A/B choices between the two compared data fields."""
    data = record.get("data")
    if not isinstance(data, Mapping):
        raise ValueError("data: expected the task's data object")
    prompt = text_of(_first(data, PROMPT_KEYS, "data prompt field"), "prompt")
    events: list[Event] = []
    for ann in record.get("annotations") or []:
        if ann.get("was_cancelled"):
            continue
        who = ann.get("completed_by")
        who = who.get("email") or who.get("id") if isinstance(who, Mapping) else who
        user = ("external", f"label-studio:{who}") if who is not None else None
        extra = {"created_at": ann["created_at"]} if ann.get("created_at") else {}
        for result in ann.get("result") or []:
            value = result.get("value") or {}
            kind = result.get("type")
            extra["meta_question"] = result.get("from_name")
            if kind == "pairwise":
                names = [n for n in str(result.get("to_name", "")).split(",") if n in data]
                if len(names) != 2:
                    names = [k for k in data if k not in PROMPT_KEYS][:2]
                left, right = (text_of(data[n], n) for n in names)
                won = value.get("selected")
                events.append((user, {"kind": "pairwise", "prompt": prompt, "reply": left,
                                      "other_reply": right, "value": 1 if won == "left" else -1,
                                      **extra}))  # fmt: skip
                continue
            reply = text_of(data[result["to_name"]] if result.get("to_name") in data else
                            _first(data, REPLY_KEYS, "data reply field"), "reply")  # fmt: skip
            if kind == "rating":
                judged = _judgement({"rating": value.get("rating")}, values)
            elif kind == "choices" and value.get("choices"):
                try:
                    judged = _judgement({"thumb": value["choices"][0]}, values)
                except ValueError:
                    continue  # a label that is not a thumb (a topic, ...)
            else:
                continue
            events.append((user, {"prompt": prompt, "reply": reply, **judged, **extra}))
    if not events:
        raise ValueError("no rating, choices or pairwise result in the annotations")
    return events


# -- Langfuse / LangSmith scores ----------------------------------------------------------------
def _score_kinds(records: list[tuple[int, Any]]) -> dict[str, str]:
    """score name -> thumbs (every value 0/1 or boolean, as 👍/👎 feedback is stored) or
    rating."""
    seen: dict[str, set] = defaultdict(set)
    for _, rec in records:
        if isinstance(rec, Mapping):
            value = rec.get("value", rec.get("score"))
            seen[str(rec.get("name") or rec.get("key") or "")].add(
                value if not isinstance(value, bool) else int(value)
            )
    return {name: "thumbs" if vals <= {0, 1} else "rating" for name, vals in
            seen.items()}  # fmt: skip


def parse_score(
    record: Mapping, values: ValueMapping, kinds: Mapping[str, str], names: Collection[str] = ()
) -> list[Event]:
    """One score row joined with its trace: input / output (text or messages), name or key,
    value or score (numeric or boolean; categorical ``stringValue`` as a thumb), ``comment``,
    userId / user_id, timestamp / created_at. A score whose values are all 0 / 1 is a thumb
    (0 = down), other numbers ratings (``--rating-scale``)."""
    name = str(record.get("name") or record.get("key") or "")
    if names and name not in names:
        return [(None, {"meta_question": name})]  # counted as another question's score
    prompt = text_of(_first(record, ("input", "prompt", "inputs"), "input"), "input")
    reply = text_of(_first(record, ("output", "reply", "completion", "outputs"), "output"),
                    "output")  # fmt: skip
    value = record.get("value", record.get("score"))
    if value is None and record.get("stringValue"):
        judged = _judgement({"thumb": record["stringValue"]}, values)
    elif kinds.get(name) == "thumbs":
        judged = {"kind": "thumbs", "value": 1 if value else -1}
    else:
        judged = _judgement({"rating": value}, values)
    if isinstance(record.get("comment"), str):
        judged["comment"] = record["comment"]
    when = record.get("timestamp") or record.get("created_at")
    extra = {"created_at": when} if isinstance(when, str) else {}
    user = _user_ref(record, "userId", "user")
    return [(user, {"prompt": prompt, "reply": reply, "meta_question": name, **judged, **extra})]


# -- the import ---------------------------------------------------------------------------------
PARSERS: dict[str, Callable[..., list[Event]]] = {
    "trl": parse_trl, "messages": parse_messages, "argilla": parse_argilla,
    "label-studio": parse_label_studio,
}  # fmt: skip


def import_records(
    store: FeedbackStore,
    path: str | Path,
    fmt: str,
    *,
    values: ValueMapping | None = None,
    default_user: str = DEFAULT_USER,
    questions: Collection[str] = (),
) -> ImportReport:
    """Import a file or folder in one of ``FORMATS``; bad records are reported by line (JSON
    lines) or row number and skipped whole. ``questions``: keep only these Argilla questions,
    Label Studio ``from_name`` controls or score names (others are counted as skipped)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    path, values = Path(path), values or ValueMapping()
    report = ImportReport(str(path))
    records = list(read_records(path, report))
    parse = PARSERS.get(fmt)
    if parse is None:  # scores: a thumb or a rating is decided per score name, over the file
        kinds = _score_kinds(records)
        parse = lambda rec, vals: parse_score(rec, vals, kinds, questions)  # noqa: E731
    pending: list[tuple[int, str | None, dict]] = []
    for line, record in records:
        report.rows += 1
        try:
            if not isinstance(record, Mapping):
                raise ValueError("expected a JSON object / a row")
            for ref, ev in parse(record, values):
                if questions and ev.get("meta_question") not in questions:
                    report.skipped["other question"] += 1
                    continue
                pending.append((line, *_with_user(store, fmt, ref, ev, default_user)))
        except (ValueError, TypeError, KeyError) as exc:
            report.bad(line, str(exc) if not isinstance(exc, KeyError) else f"{exc}: missing")
        if len(pending) >= BATCH:
            _flush(store, pending, report)
            pending = []
    _flush(store, pending, report)
    return report.finish()


def _with_user(
    store: FeedbackStore, fmt: str, ref: tuple[str, str] | None, event: dict, default_user: str
) -> tuple[str | None, dict]:
    """(external id or None, event with user_id and a derived event_id)."""
    kind, who = ref or ("id", default_user)
    question = event.pop("meta_question", None)
    event["user_id"] = store.hasher.pseudonym(who) if kind == "external" else who
    key = json.dumps([fmt, question, kind, who, event], sort_keys=True, default=str)
    event["event_id"] = "imp_" + store.hasher.digest("import", key)[:32]
    return (who if kind == "external" else None), event


def _flush(store: FeedbackStore, pending: list[tuple[int, str | None, dict]], report) -> None:
    external = [(line, who, {}, ev) for line, who, ev in pending if who is not None]
    flush_external_rows(store, external, report)  # users upserted as keyed hashes first
    record_rows(store, [(line, ev) for line, who, ev in pending if who is None], report)
