#!/usr/bin/env bash
# Delete the TPU VM / slice (checkpoints on gs:// survive). Variables: scripts/tpu/env.sh.
source "$(dirname "$0")/env.sh"
"${GCLOUD_TPU[@]}" delete "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --quiet
