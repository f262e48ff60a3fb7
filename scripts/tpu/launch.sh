#!/usr/bin/env bash
# Start training on every worker at once. On each, bioinstruct_jax.parallel.distributed calls
# jax.distributed.initialize(), and JAX reads the slice (workers, coordinator) from the TPU VM's
# metadata, one process per worker. Runs under nohup, logs to REMOTE_DIR/train.log on each worker;
# worker 0 writes the progress bar and the run's logs. Arguments go to `python -m bioinstruct_jax.train`:
#   bash scripts/tpu/launch.sh --config configs/paper/llama2-7b-tpu-v3-8.yaml model.hf_path=/data/llama2-7b
# Variables: scripts/tpu/env.sh (RUN_DIR becomes train.output_dir unless given as an argument; a
# pod slice or a Spot TPU needs a gs:// one).
source "$(dirname "$0")/env.sh"
out="$RUN_DIR"
given=0
for a in "$@"; do
  case "$a" in train.output_dir=*) out="${a#train.output_dir=}"; given=1 ;; esac
done
require_bucket_when_needed "$out" || exit 2
args=("$@")
if [ "$given" = "0" ]; then args+=("train.output_dir=$RUN_DIR"); fi
quoted="$(printf '%q ' "${args[@]}")"
on_all_workers "cd $REMOTE_DIR && nohup .venv/bin/python -m bioinstruct_jax.train $quoted > train.log 2>&1 &"
echo "launched on $TPU_NAME ($TPU_HOSTS worker(s)); follow with: bash scripts/tpu/tail.sh"
