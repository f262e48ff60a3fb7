#!/usr/bin/env bash
# The paper's data-size curve in one command: LoRA-tune on the first 5K, 10K, 15K, 20K and 25K
# instructions (data.tfds_config=all_5k ... all_25k: nested subsets of the training split built from
# data.train_file; all_25k is the whole training split, 98% of the file with data.val_fraction 0.02),
# evaluate each run, print the group averages per size and write $OUT/data_size.png (score against
# training records, beside the paper's points: its tables give 0 and 25,005 instructions only).
#   bash scripts/data_size_curve.sh configs/paper/llama2-7b-gpu-a100x8.yaml model.hf_path=/data/llama2-7b \
#       EVAL_ARGS="--data-dir ../shared/data --tasks paper"
# Variables: OUT (default runs/data_size), SIZES (default "5k 10k 15k 20k 25k"), EPOCHS (default 3),
#   PY, TRAIN, EVAL, EVAL_ARGS as in scripts/ablation.sh. Steps scale with the data:
#   train.steps=0 + train.epochs=$EPOCHS. Eval tasks whose data files are missing are skipped with
#   one line each.
set -euo pipefail
cd "$(dirname "$0")/.."
config="$1"; shift
OUT="${OUT:-runs/data_size}"
PY="${PY:-.venv/bin/python}"
TRAIN="${TRAIN:-$PY -m bioinstruct_jax.train}"
EVAL="${EVAL:-$PY -m bioinstruct_jax.eval}"
EPOCHS="${EPOCHS:-3}"
SIZES="${SIZES:-5k 10k 15k 20k 25k}"
for size in $SIZES; do
  $TRAIN --config "$config" "$@" "data.tfds_config=all_$size" train.steps=0 "train.epochs=$EPOCHS" \
    "train.output_dir=$OUT/$size"
done
for size in $SIZES; do
  # shellcheck disable=SC2086
  $EVAL --model "$OUT/$size" --out "$OUT/$size/eval" --skip-missing ${EVAL_ARGS:-}
done
# shellcheck disable=SC2086
$PY -m bioinstruct_jax.eval.ablation data-size --runs "$OUT" --sizes $SIZES --png "$OUT/data_size.png"
