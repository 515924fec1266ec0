"""One tracked run shared by every stage: W&B (offline by default) plus plain files.

``RUN_DIR/config.yaml``  the resolved config
``RUN_DIR/metrics.jsonl`` one JSON object per ``log`` call (W&B keeps metrics in a binary file,
                          so the JSON lines are what a person or a test reads)
``RUN_DIR/wandb/``       the W&B run folder (offline mode needs no network)

W&B's x-axes are defined metrics, never ``wandb.log(step=...)`` (W&B drops a record whose step
is behind its counter): per-round records (``eval/*``, ``policy/*``, ``reward/*``, ...) are
plotted against ``round``; each trainer's per-step curve (``policy_train/ADAPTER/*``,
``reward_train/PHASE/*``) against its own ``.../step``, counted on across rounds.
``read_wandb_records`` reads an offline run back with W&B's own reader (``wandb leet inspect``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlhf_persona.config import dump_config


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _flatten(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


class Run:
    """A tracked run. Use as a context manager, or call ``finish()``.

    Args:
        run_dir: folder for this run's files (created).
        config: the resolved experiment config (any pydantic model), saved as ``config.yaml``.
        wandb_mode: ``offline`` (default), ``online`` or ``disabled``.
        project, entity, name: passed to ``wandb.init``.
        resume: continue the W&B run of an earlier process on this folder.
        artifacts: whether ``log_artifact`` logs (``tracking.log_artifacts``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: BaseModel | None = None,
        wandb_mode: str = "offline",
        project: str = "rlhf-persona",
        entity: str | None = None,
        name: str | None = None,
        resume: bool = False,
        artifacts: bool = True,
    ):
        self.dir = Path(run_dir)
        self.artifacts = artifacts
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.wandb_mode = wandb_mode
        if config is not None:
            (self.dir / "config.yaml").write_text(dump_config(config))
        self._wandb = None
        if wandb_mode != "disabled":
            self._wandb = self._init_wandb(config, project, entity, name, resume)
        self.round: int | None = None  # the loop's current round: the x of per-round records
        self._curves: dict[str, int] = {}  # curve group -> steps logged before this trainer
        self._curve_start: dict[str, int] = {}
        self._defined: set[str] = set()

    def _init_wandb(self, config, project, entity, name, resume):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run_id_file = self.dir / ".wandb_run_id"
        run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else None
        kwargs = dict(
            project=project,
            entity=entity,
            name=name or self.dir.name,
            dir=str(self.dir),
            mode=self.wandb_mode,
            config=config.model_dump(mode="json") if config is not None else None,
            reinit="finish_previous",
        )
        try:
            run = wandb.init(id=run_id, resume="allow" if run_id else None, **kwargs)
        except Exception as exc:  # e.g. "run ID is in use" by a killed process's W&B service
            if run_id is None:
                raise
            warnings.warn(
                f"W&B run {run_id} cannot be resumed ({exc}); starting a new one", stacklevel=2
            )
            run = wandb.init(**kwargs)
        run_id_file.write_text(run.id)
        run.define_metric("round")
        for section in ROUND_SECTIONS:
            run.define_metric(f"{section}/*", step_metric="round")
        return run

    @property
    def report_to(self) -> list[str]:
        """transformers ``report_to`` consistent with this run, for code of your own; the
        project's trainers keep ``report_to=[]`` and log through ``trainer_logger``."""
        return ["wandb"] if self._wandb is not None else []

    @property
    def wandb_dir(self) -> Path | None:
        return Path(self._wandb.dir).parent if self._wandb is not None else None

    def _append(self, record: dict) -> None:
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps({"time": time.time(), **record}) + "\n")

    def log(self, metrics: dict, step: int | None = None, stage: str | None = None) -> None:
        """Append metrics (nested dicts allowed) to metrics.jsonl and W&B. ``step`` is the round
        (default: ``self.round``); in W&B the numbers go under ``STAGE/`` against ``round``."""
        step = self.round if step is None else step
        record = {} if step is None else {"step": step}
        if stage is not None:
            record["stage"] = stage
        self._append({**record, **_jsonable(metrics)})
        self._wandb_log(metrics, step, stage)

    def _wandb_log(self, metrics: dict, step: int | None, stage: str | None) -> None:
        if self._wandb is not None:
            flat = _flatten(_jsonable(metrics), f"{stage}/" if stage else "")
            numeric = {k: v for k, v in flat.items() if _is_number(v)}
            if step is not None:
                numeric["round"] = step
            self._wandb.log(numeric)

    def log_curve(self, group: str, logs: dict, step: int, section: str = "train") -> None:
        """One point of a trainer's per-step curve: W&B keys ``SECTION/GROUP/NAME`` against
        ``SECTION/GROUP/step``, which counts on from the group's previous trainers (a round's
        adapter continues last round's curve). Call ``start_curve`` before each trainer."""
        key = f"{section}/{group}"
        at = self._curve_start.get(key, 0) + int(step)
        self._curves[key] = max(self._curves.get(key, 0), at)
        self._append({"stage": section, "group": group, "step": at, "round": self.round,
                      **_jsonable(logs)})  # fmt: skip
        self._wandb_curve(key, logs, at)

    def _wandb_curve(self, key: str, logs: dict, at: int) -> None:
        if self._wandb is None:
            return
        if key not in self._defined:
            self._defined.add(key)
            self._wandb.define_metric(f"{key}/step")
            self._wandb.define_metric(f"{key}/*", step_metric=f"{key}/step")
        flat = _flatten(_jsonable(logs), f"{key}/")
        self._wandb.log({**{k: v for k, v in flat.items() if _is_number(v)}, f"{key}/step": at})

    def replay_lost(self, before_round: int) -> set[int]:
        """After a killed process: W&B writes its offline log in 32 KB blocks, so the records
        of its last seconds are lost, while metrics.jsonl (a line per record) keeps them.
        Re-log to W&B the records of rounds before ``before_round`` that no W&B log of this
        folder holds, and continue the trainers' step counts; returns the rounds replayed."""
        records = [r for r in read_metrics(self.dir) if _round_of(r) < before_round]
        for rec in records:  # curves count on from where the earlier processes stopped
            if rec.get("stage") in CURVE_SECTIONS and "group" in rec:
                key = f"{rec['stage']}/{rec['group']}"
                self._curves[key] = max(self._curves.get(key, 0), int(rec["step"]))
        if self._wandb is None:
            return set()
        have = _history_index(read_wandb_records(self.dir, "history"))
        replayed = set()
        for rec in records:
            stage, step = rec.get("stage"), rec.get("step")
            values = {k: v for k, v in rec.items() if k not in META_KEYS}
            if stage in CURVE_SECTIONS and "group" in rec:
                key = f"{stage}/{rec['group']}"
                if (f"{key}/step", step) not in have:
                    self._wandb_curve(key, values, step)
            elif stage in ROUND_SECTIONS and step is not None:
                flat = _flatten(_jsonable(values), f"{stage}/")
                first = next((k for k, v in flat.items() if _is_number(v)), None)
                if first is not None and (first, step) not in have:
                    self._wandb_log(values, step, stage)
                    replayed.add(int(step))
        return replayed

    def start_curve(self, group: str, section: str = "train") -> None:
        key = f"{section}/{group}"
        self._curve_start[key] = self._curves.get(key, 0)

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        """A ``wandb.Table`` (e.g. sample replies) against the current round; W&B only."""
        if self._wandb is None:
            return
        import wandb

        table = wandb.Table(columns=columns, data=[[_jsonable(v) for v in r] for r in rows])
        self._wandb.log({key: table, **({} if self.round is None else {"round": self.round})})

    def log_artifact(self, path: str | Path, name: str, type: str, metadata: dict | None = None):
        """Log the file or folder ``path`` as a W&B artifact (a new version of ``name``). Files
        are added in place (``policy="immutable"``): run folders are never rewritten."""
        if self._wandb is None or not self.artifacts or not Path(path).exists():
            return None
        import wandb

        artifact = wandb.Artifact(_artifact_name(name), type=type, metadata=_jsonable(metadata))
        if Path(path).is_dir():
            artifact.add_dir(str(path), policy="immutable")
        else:
            artifact.add_file(str(path), policy="immutable")
        aliases = ["latest"] + ([f"round-{self.round}"] if self.round is not None else [])
        return self._wandb.log_artifact(artifact, aliases=aliases)

    def summary(self, values: dict) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(_flatten(_jsonable(values)))

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


ROUND_SECTIONS = ("eval", "policy", "reward", "collect", "segment")
CURVE_SECTIONS = ("policy_train", "reward_train")
META_KEYS = frozenset({"time", "stage", "step", "group", "round"})


def _round_of(record: dict) -> int:
    """The loop round a metrics.jsonl record belongs to (-1: none)."""
    value = record.get("round") if record.get("stage") in CURVE_SECTIONS else record.get("step")
    return -1 if value is None else int(value)


def _history_index(history: list[dict]) -> set[tuple[str, Any]]:
    """(key, x) pairs present in W&B history records: x is the record's ``round`` for per-round
    keys and the value itself for curve ``.../step`` keys."""
    have = set()
    for rec in history:
        item = rec["history"]["item"]
        for key, value in item.items():
            have.add((key, value) if key.endswith("/step") else (key, item.get("round")))
    return have


def _is_number(value) -> bool:
    return isinstance(value, int | float)


def _artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def read_wandb_records(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The records of the run's W&B transaction log (``RUN_DIR/wandb/*/run-*.wandb``, e.g. an
    offline run) as W&B's own reader prints them (``wandb leet inspect --json``); ``kind``:
    only records of that type (``history``, ``metric``, ``artifact``, ``summary``, ...)."""
    files = sorted(Path(run_dir).glob("wandb/*-run-*/run-*.wandb"))
    records = []
    for path in files:
        # an interrupted (or still written) log ends with a note and a non-zero exit status
        out = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        records += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return [r for r in records if kind is None or r.get("type") == kind]


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_run(cfg, resume: bool = False) -> Run:
    """A Run for an ExperimentConfig, with its tracking section applied."""
    return Run(
        cfg.run_dir,
        config=cfg,
        wandb_mode=cfg.tracking.wandb_mode,
        project=cfg.tracking.project,
        entity=cfg.tracking.entity,
        name=cfg.run.name,
        resume=resume,
        artifacts=cfg.tracking.log_artifacts,
    )


def trainer_logger(run: Run, group: str, section: str = "train"):
    """A transformers ``TrainerCallback`` that sends a trainer's logs (loss, rewards, KL, ...:
    whatever TRL logs each step) to ``run.log_curve(group, ...)``. Trainers keep
    ``report_to=[]``: transformers' own W&B callback re-keys the whole run to its
    ``train/global_step``, which restarts with every trainer of a round."""
    from transformers import TrainerCallback

    class CurveLogger(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            run.start_curve(group, section)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                run.log_curve(group, logs, state.global_step, section)

    return CurveLogger()
