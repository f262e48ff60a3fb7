#!/usr/bin/env bash
# Start training on every worker at once (JAX's TPU cluster detection joins them into one
# program; bioinstruct_jax.distributed initialises it). Runs under nohup, logs to
# REMOTE_DIR/train.log on each worker. Arguments go to `python -m bioinstruct_jax.train`.
#   bash scripts/tpu/launch.sh --config configs/paper/llama2-7b-tpu-v3-8.yaml model.hf_path=/data/llama2-7b
# Variables: scripts/tpu/env.sh (RUN_DIR becomes train.output_dir unless given as an argument).
source "$(dirname "$0")/env.sh"
args="$*"
case "$args" in *train.output_dir=*) ;; *) args="$args train.output_dir=$RUN_DIR" ;; esac
on_all_workers "cd $REMOTE_DIR && nohup .venv/bin/python -m bioinstruct_jax.train $args > train.log 2>&1 &"
echo "launched on $TPU_NAME; follow with: bash scripts/tpu/tail.sh"
