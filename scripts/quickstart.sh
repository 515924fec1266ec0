#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: the quickstart loop on the embedded models.
set -euo pipefail
cd "$(dirname "$0")/.."
RLHF_PERSONA_SKIP_APT=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_SILENT=true
.venv/bin/rlhf-persona models build embedded:tiny
.venv/bin/rlhf-persona models sample embedded:tiny
