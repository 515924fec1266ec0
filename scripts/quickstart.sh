#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: two rounds of the closed loop on
# envs/four_segments.yaml with the embedded models, then prints the per-segment table and the
# report's path. Extra arguments go to `rlhf-persona loop`, e.g. --set loop.rounds=3.
set -euo pipefail
cd "$(dirname "$0")/.."
RLHF_PERSONA_SKIP_APT=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_SILENT=true
.venv/bin/rlhf-persona models build embedded:tiny
.venv/bin/rlhf-persona loop configs/quickstart.yaml "$@"
