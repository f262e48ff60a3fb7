#!/usr/bin/env bash
# Follow the training log of one worker (WORKER, default 0: the one that prints the progress bar).
# Variables: scripts/tpu/env.sh, WORKER.
source "$(dirname "$0")/env.sh"
"${GCLOUD_TPU[@]}" ssh "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --worker="${WORKER:-0}" \
  --command "tail -n 200 -F $REMOTE_DIR/train.log"
