#!/usr/bin/env bash
# The paper's category ablation in one command: LoRA-tune on the QA, IE and GEN subsets (one run
# each, same settings, the SAME NUMBER OF EPOCHS: train.steps=0 train.epochs=$EPOCHS, so a smaller
# category gets fewer steps, not more passes), evaluate every run, then print the per-group
# averages (QA / IE / GEN) beside the paper's ablation (LLaMA 2 7B).
#   bash scripts/ablation.sh configs/paper/llama2-7b-gpu-a100x8.yaml model.hf_path=/data/llama2-7b \
#       EVAL_ARGS="--data-dir ../shared/data --tasks paper"
# Each run sets data.tfds_config=<category> (the bioinstruct TFDS configs qa / ie / gen, built from
# data.train_file). The published 25K file carries no categories: when data.labels_file is unset
# (or names a file that does not exist) and train_file has no category on every record, the
# label-only mode of data generation labels train_file first (an OpenAI-compatible model; the key
# from the environment), written to data.labels_file or $OUT/labels.jsonl and reused by a rerun.
# Eval tasks whose data files are missing are skipped with one line each (eval --skip-missing).
# Variables: OUT (runs root, default runs/ablation), CATEGORIES (default "qa ie gen"), EPOCHS
#   (default 3), PY (default .venv/bin/python), TRAIN (command prefix, default "$PY -m
#   bioinstruct_jax.train.loop"; e.g. scripts/gpu/launch.sh), EVAL (default "$PY -m bioinstruct_jax.eval";
#   EVAL_ARGS are appended), LABEL_ARGS (appended to the labelling command, e.g. "--teacher-model gpt-4").
set -euo pipefail
cd "$(dirname "$0")/.."
config="$1"; shift
OUT="${OUT:-runs/ablation}"
PY="${PY:-.venv/bin/python}"
TRAIN="${TRAIN:-$PY -m bioinstruct_jax.train}"
EVAL="${EVAL:-$PY -m bioinstruct_jax.eval}"
EPOCHS="${EPOCHS:-3}"
CATEGORIES="${CATEGORIES:-qa ie gen}"
mkdir -p "$OUT"

labels_args=()
need_labels="$($PY -m bioinstruct_jax.eval.ablation labels-needed --config "$config" --default "$OUT/labels.jsonl" -- "$@")"
if [[ -n "$need_labels" ]]; then
  train_file="$($PY -m bioinstruct_jax.train --config "$config" "$@" --print-config \
    | $PY -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["data"]["train_file"])')"
  echo "labelling $train_file -> $need_labels (label-only data generation)" >&2
  # shellcheck disable=SC2086
  $PY -m bioinstruct_jax.data.generate --label-only --input "$train_file" --out "$need_labels" ${LABEL_ARGS:-}
  labels_args=("data.labels_file=$need_labels")
fi

for cat in $CATEGORIES; do
  $TRAIN --config "$config" "$@" "${labels_args[@]}" "data.tfds_config=$cat" \
    train.steps=0 "train.epochs=$EPOCHS" "train.output_dir=$OUT/$cat"
done
for cat in $CATEGORIES; do
  # shellcheck disable=SC2086
  $EVAL --model "$OUT/$cat" --out "$OUT/$cat/eval" --skip-missing ${EVAL_ARGS:-}
done
# shellcheck disable=SC2086
$PY -m bioinstruct_jax.eval.ablation category --runs "$OUT" --categories $CATEGORIES
