"""Several processes (accelerate launch, two CPU processes over gloo): rank guards and DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rlhf_persona import distributed

HERE = Path(__file__).parent
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _launch(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Two processes through accelerate's torchrun launcher (--multi_gpu; on a machine without
    GPUs the processes choose the CPU and gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_one_process_is_the_main_one():
    assert distributed.is_main() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.share({"a": 1}) == {"a": 1}
    assert distributed.local_device("cuda") == "cuda" and distributed.local_device("cpu") == "cpu"
    distributed.barrier()  # a no-op without a launcher


def test_two_processes_train_one_policy_data_parallel(tmp_path, tiny_test_path):
    _launch([str(HERE / "distributed" / "ppo_ranks.py"), str(tmp_path)], tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["main"] for r in ranks] == [True, False]
    # Other prompts per process, one set of weights: DDP averaged the gradients.
    assert ranks[0]["seen"] != ranks[1]["seen"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["log"] == ranks[1]["log"]  # metrics are averaged over processes
    assert ranks[0]["adapters"] == ranks[1]["adapters"] == ["segment_0"]
    registry = tmp_path / "registry"
    assert (registry / "manifest.json").is_file()
    assert (registry / "adapters" / "segment_0" / "adapter_model.safetensors").is_file()


def test_loop_under_two_processes_collects_writes_and_logs_once(tmp_path, tiny_test_path):
    """One round of the tiny loop (PPO against the reward model, which the main process shares)
    under two processes: one store, one W&B run, one metrics line per log call."""
    import sqlite3

    import yaml
    from test_loop import TINY

    from rlhf_persona.tracking import read_metrics

    cfg = json.loads(json.dumps(TINY))
    cfg["run"]["runs_dir"] = str(tmp_path / "runs")
    cfg["reward"].update(user_level=False, best_of_n=1)
    cfg["policy"] = {"algorithm": "ppo", "steps": 1, "batch_size": 2, "min_rows": 1,
                     "train_global": False, "max_completion_length": 8}  # fmt: skip
    cfg["population"]["users"] = 16
    cfg["loop"].update(rounds=1, online_reward="model", prompts_per_user=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    _launch(["-m", "rlhf_persona.cli", "loop", str(tmp_path / "tiny.yaml")], tmp_path)

    run_dir = tmp_path / "runs" / "tiny"
    done = json.loads((run_dir / "round_0" / "round.json").read_text())
    turns = done["eval"]["collected"]["turns"]
    assert turns == 16 * 2
    with sqlite3.connect(run_dir / "feedback.db") as db:
        replies = db.execute("select count(*) from replies").fetchone()[0]
        users = db.execute("select count(*) from users").fetchone()[0]
    assert replies == turns + done["eval"]["collected"]["ab_turns"]  # not once per process
    assert users == 16
    evals = [m for m in read_metrics(run_dir) if m.get("stage") == "eval"]
    assert len(evals) == 1
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    manifest = json.loads((run_dir / "round_0" / "policy" / "manifest.json").read_text())
    assert manifest["algorithm"] == "ppo" and manifest["adapters"]
