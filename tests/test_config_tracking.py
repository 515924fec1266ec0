"""Typed configs (errors name file and key; --set overrides) and the offline tracked run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_persona.config import ConfigError, ExperimentConfig, load_config
from rlhf_persona.tracking import Run, read_metrics, start_run


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_typo_key_is_named_with_file(tmp_path):
    path = _write(tmp_path, "policy:\n  algoritm: dpo\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "policy.algoritm" in msg and "unknown key" in msg


def test_typo_section_is_named(tmp_path):
    path = _write(tmp_path, "polcy:\n  algorithm: dpo\n")
    with pytest.raises(ConfigError, match=r"polcy: unknown key"):
        load_config(path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = _write(tmp_path, "population:\n  users: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "population.users" in msg and "'many'" in msg and str(path) in msg


def test_bad_choice_names_key(tmp_path):
    path = _write(tmp_path, "policy:\n  algorithm: trpo\n")
    with pytest.raises(ConfigError, match=r"policy\.algorithm"):
        load_config(path)


def test_invalid_yaml_and_missing_file_name_the_file(tmp_path):
    path = _write(tmp_path, "policy: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_empty_section_means_defaults(tmp_path):
    path = _write(tmp_path, "policy:\n  # algorithm: kto\nrun:\n  seed: 4\n")
    cfg = load_config(path)
    assert cfg.policy.algorithm == "dpo" and cfg.run.seed == 4


def test_set_overrides_file_values(tmp_path):
    path = _write(tmp_path, "policy:\n  algorithm: dpo\nrun:\n  seed: 1\n")
    cfg = load_config(path, ["policy.algorithm=kto", "run.seed=7", "segmentation.k_range=[3, 5]"])
    assert cfg.policy.algorithm == "kto"
    assert cfg.run.seed == 7
    assert cfg.segmentation.k_range == (3, 5)
    assert load_config(path).policy.algorithm == "dpo"  # the file itself is unchanged


def test_set_with_unknown_key_or_bad_syntax_fails(tmp_path):
    with pytest.raises(ConfigError, match=r"policy\.algoritm: unknown key") as err:
        load_config(None, ["policy.algoritm=kto"])
    assert "--set" in str(err.value)
    with pytest.raises(ConfigError, match="KEY.SUB=VALUE"):
        load_config(None, ["policy.algorithm"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["run.seed=1", "run.seed.x=2"])


def test_every_field_has_a_default_and_description():
    from rlhf_persona.config import describe_fields

    rows = describe_fields()
    assert len(rows) > 10
    missing = [key for key, _, _, desc in rows if not desc]
    assert not missing, f"fields without description: {missing}"
    ExperimentConfig()  # every field has a default


def test_cli_reports_config_error_without_traceback(tmp_path):
    path = _write(tmp_path, "reward:\n  strategy: heads\n  stratgy: lora\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_persona.cli", "config", "show", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "reward.stratgy" in out and str(path.name) in out
    assert "Traceback" not in out


def test_offline_run_leaves_metrics_config_and_wandb_folder(tmp_path):
    cfg = load_config(None, [f"run.runs_dir={tmp_path}", "run.name=t1", "run.seed=5"])
    with start_run(cfg) as run:
        assert run.report_to == ["wandb"]
        run.log({"loss": 0.5, "nested": {"acc": 0.75}}, step=1, stage="reward")
        run.log({"loss": 0.25}, step=2, stage="reward")
        wandb_dir = run.wandb_dir
    run_dir = tmp_path / "t1"
    records = read_metrics(run_dir)
    assert [r["loss"] for r in records] == [0.5, 0.25]
    assert records[0]["nested"] == {"acc": 0.75} and records[0]["stage"] == "reward"
    saved = load_config(run_dir / "config.yaml")
    assert saved.run.seed == 5 and saved == cfg
    assert wandb_dir is not None and wandb_dir.is_dir()
    assert wandb_dir.name.startswith("offline-run-")
    assert list(wandb_dir.glob("*.wandb")), "the offline run has its binary log"
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[1])["step"] == 2


def test_disabled_run_writes_files_only(tmp_path):
    with Run(tmp_path / "r", config=ExperimentConfig(), wandb_mode="disabled") as run:
        assert run.report_to == []
        run.log({"x": float("nan"), "y": 1})
    assert read_metrics(tmp_path / "r")[0]["x"] is None
    assert not (tmp_path / "r" / "wandb").exists()
