"""Write an export to a folder that ``datasets.load_dataset(folder)`` and ``trl dpo
--dataset_name folder`` read as they are, and optionally push it to the Hugging Face Hub.

Layout: ``train.jsonl`` (or ``train.parquet``), a ``README.md`` dataset card whose YAML
``configs`` point ``load_dataset`` at the data files (so nothing else in the folder is taken for
data), and ``export_report.json`` (what was used and dropped). With ``per_segment`` each segment's
rows also go to ``segment_<id>/train.<ext>`` (``segment_none`` for users without a segment),
each a config of the card: ``load_dataset(folder, "segment_2")``, ``trl dpo --dataset_config
segment_2``, or ``load_dataset(folder + "/segment_2")``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rlhf_persona.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

FILE_FORMATS = ("jsonl", "parquet")


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Without ``datasets``' progress bars (restored after)."""
    import datasets

    shown = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()


def segment_config(segment: int) -> str:
    return "segment_none" if segment < 0 else f"segment_{segment}"


def write_export(
    dataset: Dataset,
    report: dict[str, Any],
    out: Path,
    *,
    file_format: str = "jsonl",
    per_segment: bool = False,
) -> dict[str, int]:
    """Write ``dataset`` under ``out`` (see the module docstring); returns rows per config."""
    if file_format not in FILE_FORMATS:
        raise UserError(f"--file-format {file_format!r}: use one of {', '.join(FILE_FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Dataset] = {"default": dataset}
    if per_segment:
        by_segment: dict[int, list[int]] = {}
        for i, segment in enumerate(dataset["segment_id"]):
            by_segment.setdefault(segment, []).append(i)
        for segment, rows in sorted(by_segment.items()):
            parts[segment_config(segment)] = dataset.select(rows)
    files = {}
    with quiet_datasets():  # a bar per small file is noise
        for name, part in parts.items():
            rel = f"train.{file_format}" if name == "default" else f"{name}/train.{file_format}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            if file_format == "jsonl":
                part.to_json(str(out / rel), lines=True, force_ascii=False)
            else:
                part.to_parquet(str(out / rel))
            files[name] = rel
    rows = {name: len(part) for name, part in parts.items()}
    (out / "export_report.json").write_text(json.dumps(report, indent=2))
    (out / "README.md").write_text(_card(report, files, rows))
    return rows


def _card(report: dict[str, Any], files: dict[str, str], rows: dict[str, int]) -> str:
    configs = [{"config_name": name, "data_files": [{"split": "train", "path": path}],
                **({"default": True} if name == "default" else {})}
               for name, path in files.items()]  # fmt: skip
    meta = yaml.safe_dump({"configs": configs, "tags": ["rlhf-persona", "trl"]}, sort_keys=False)
    lines = [f"---\n{meta}---", "", f"# rlhf-persona {report['format']} export", "",
             "Written by `rlhf-persona export` in TRL's format.", "", "| config | rows |",
             "|---|---|", *(f"| {name} | {n} |" for name, n in rows.items()), ""]  # fmt: skip
    for section in ("used", "dropped"):
        counts = report.get(section) or {}
        if counts:
            lines += [f"{section}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    return "\n".join(lines)


def push_export(out: Path, repo: str, *, private: bool = False) -> str:
    """Upload the folder as a dataset repo (created if needed) to ``$HF_ENDPOINT`` (default the
    Hugging Face Hub) with the token of ``$HF_TOKEN`` / ``hf auth login``; returns the commit
    URL. Hub errors are a one-line ``UserError``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(out),
                                 commit_message="rlhf-persona export")  # fmt: skip
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--push-to-hub {repo}: {first}") from None
    return info.commit_url
