#!/usr/bin/env bash
# The main job on the embedded default: install, then evaluate SmolLM2-135M-Instruct, LoRA-tune it,
# evaluate it again, print the before/after table and export it, on the CPU. Extra arguments go to
# the quickstart module (e.g. --tiny, --model FILE, train.steps=N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bioinstruct_jax.quickstart "$@"
