#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_SILENT=true
# Embedded models are built once per machine into this cache and reused by every test.
export RLHF_PERSONA_CACHE="${RLHF_PERSONA_CACHE:-$PWD/.cache/rlhf_persona}"
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
.venv/bin/python -m pytest -q "$@"
