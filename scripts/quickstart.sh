#!/usr/bin/env bash
# The main job on the embedded default: install, then train -> checkpoint -> eval -> export a
# tiny LLaMA on the bundled seed tasks, on the CPU. Extra arguments go to the quickstart module.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bioinstruct_jax.quickstart "$@"
