"""One tracked run shared by every stage: W&B (offline by default) plus plain files.

``RUN_DIR/config.yaml``  the resolved config
``RUN_DIR/metrics.jsonl`` one JSON object per ``log`` call (W&B keeps metrics in a binary file,
                          so the JSON lines are what a person or a test reads)
``RUN_DIR/wandb/``       the W&B run folder (offline mode needs no network)
"""

from __future__ import annotations

import json
import math
import os
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
    ):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.wandb_mode = wandb_mode
        if config is not None:
            (self.dir / "config.yaml").write_text(dump_config(config))
        self._wandb = None
        if wandb_mode != "disabled":
            self._wandb = self._init_wandb(config, project, entity, name, resume)

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
        return run

    @property
    def report_to(self) -> list[str]:
        """What TRL/transformers trainers should report to, consistent with this run."""
        return ["wandb"] if self._wandb is not None else []

    @property
    def wandb_dir(self) -> Path | None:
        return Path(self._wandb.dir).parent if self._wandb is not None else None

    def log(self, metrics: dict, step: int | None = None, stage: str | None = None) -> None:
        """Append metrics (nested dicts allowed) to metrics.jsonl and W&B."""
        record = {"time": time.time()}
        if step is not None:
            record["step"] = step
        if stage is not None:
            record["stage"] = stage
        record.update(_jsonable(metrics))
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            flat = _flatten(_jsonable(metrics), f"{stage}/" if stage else "")
            numeric = {k: v for k, v in flat.items() if isinstance(v, int | float)}
            self._wandb.log(numeric, step=step)

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
    )
