#!/usr/bin/env bash
# Copy a run's output directory (checkpoints, metrics, TensorBoard events, loss curve) to DEST
# (a local folder, default ./runs/). A gs:// RUN_DIR (pod slices, Spot TPUs: the only kind they
# allow) is copied with `gcloud storage`; a local one exists only on a single-host TPU, so it is
# copied from worker 0 with scp. Variables: scripts/tpu/env.sh, DEST.
source "$(dirname "$0")/env.sh"
DEST="${DEST:-runs/}"
mkdir -p "$DEST"
case "$RUN_DIR" in
  gs://*) gcloud storage cp -r "$RUN_DIR" "$DEST" ;;
  *)
    require_bucket_when_needed "$RUN_DIR" || exit 2
    "${GCLOUD_TPU[@]}" scp --recurse "$TPU_NAME:$REMOTE_DIR/$RUN_DIR" "$DEST" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --worker=0 ;;
esac
