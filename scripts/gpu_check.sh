#!/usr/bin/env bash
# GPU check: the quickstart loop in bf16 on CUDA; prints stage times, generation tokens/s,
# training steps/s, peak GPU memory and the acceptance checks (scripts/gpu_check.py, final JSON
# line). Options: --model SPEC|auto (auto: smallest causal LM in the local HF cache),
# --dry-run (the same path on CPU with tiny-test; part of the test suite), --set KEY=VALUE.
# Uses .venv/bin/python when there is one, else $PYTHON or python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" WANDB_SILENT=true
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" scripts/gpu_check.py "$@"
