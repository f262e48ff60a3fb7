#!/usr/bin/env bash
# The paper's data-size curve in one command: LoRA-tune on the first 5K, 10K, 15K, 20K and 25K
# instructions (data.tfds_config=all_5k ... all_25k: nested subsets of the training split built from
# data.train_file), then evaluate each run.
#   bash scripts/data_size_curve.sh configs/paper/llama2-7b-gpu-a100x8.yaml model.hf_path=/data/llama2-7b
# Variables: OUT (default runs/data_size), SIZES (default "5k 10k 15k 20k 25k"), TRAIN, EVAL,
#   EVAL_ARGS as in scripts/ablation.sh. Steps scale with the data: train.steps=0 + train.epochs=3.
set -euo pipefail
cd "$(dirname "$0")/.."
config="$1"; shift
OUT="${OUT:-runs/data_size}"
TRAIN="${TRAIN:-.venv/bin/python -m bioinstruct_jax.train}"
EVAL="${EVAL:-.venv/bin/python -m bioinstruct_jax.eval}"
for size in ${SIZES:-5k 10k 15k 20k 25k}; do
  $TRAIN --config "$config" "$@" "data.tfds_config=all_$size" train.steps=0 train.epochs=3 "train.output_dir=$OUT/$size"
done
for size in ${SIZES:-5k 10k 15k 20k 25k}; do
  $EVAL --model "$OUT/$size" --output "$OUT/$size/eval" ${EVAL_ARGS:-}
done
