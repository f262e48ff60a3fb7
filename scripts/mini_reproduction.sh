#!/usr/bin/env bash
# A small reproduction of the paper's experiment (bioinstruct_jax/jobs/mini_reproduction.py): evaluate
# SmolLM2-135M-Instruct on seeded subsets of PubMedQA / MedQA / MedMCQA (zero-shot), BC5CDR,
# MeQSum and iCliniq (one-shot), LoRA-tune it on an instruction file, evaluate again, and print the
# before / after / delta table in the paper's layout. Needs the benchmark files (--data-dir,
# default ../shared/data). Example:
#   bash scripts/mini_reproduction.sh --instructions ../shared/data/instructions/chatdoctor5k.json
# Every option: bash scripts/mini_reproduction.sh --help. Uses .venv (scripts/setup.sh) or $PYTHON.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
exec "$PYTHON" -m bioinstruct_jax.jobs.mini_reproduction "$@"
