#!/usr/bin/env bash
# The paper's category ablation in one command: LoRA-tune on the QA, IE and GEN subsets (one run
# each, same settings), then evaluate every run.
#   bash scripts/ablation.sh configs/paper/llama2-7b-gpu-a100x8.yaml model.hf_path=/data/llama2-7b \
#       data.labels_file=data/bioinstruct_labels.jsonl
# Each run sets data.tfds_config=<category> (the bioinstruct TFDS configs qa / ie / gen, built from
# data.train_file). The published file carries no categories: pass data.labels_file (JSON lines of
# {id or instruction, category}) unless your train_file has a category field.
# Variables: OUT (runs root, default runs/ablation), CATEGORIES (default "qa ie gen"),
#   TRAIN (command prefix, default ".venv/bin/python -m bioinstruct_jax.train"; e.g. scripts/gpu/launch.sh),
#   EVAL  (default ".venv/bin/python -m bioinstruct_jax.eval"; EVAL_ARGS are appended).
set -euo pipefail
cd "$(dirname "$0")/.."
config="$1"; shift
OUT="${OUT:-runs/ablation}"
TRAIN="${TRAIN:-.venv/bin/python -m bioinstruct_jax.train}"
EVAL="${EVAL:-.venv/bin/python -m bioinstruct_jax.eval}"
for cat in ${CATEGORIES:-qa ie gen}; do
  $TRAIN --config "$config" "$@" "data.tfds_config=$cat" "train.output_dir=$OUT/$cat"
done
for cat in ${CATEGORIES:-qa ie gen}; do
  $EVAL --model "$OUT/$cat" --output "$OUT/$cat/eval" ${EVAL_ARGS:-}
done
