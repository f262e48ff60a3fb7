#!/usr/bin/env bash
# Create a TPU VM or pod slice. Variables: see scripts/tpu/env.sh (TPU_NAME, TPU_ZONE, TPU_TYPE,
# TPU_VERSION, GCP_PROJECT, TPU_SPOT).   Example: TPU_TYPE=v4-8 bash scripts/tpu/create.sh
source "$(dirname "$0")/env.sh"
extra=()
if [ "$TPU_SPOT" = "1" ]; then extra+=(--spot); fi
"${GCLOUD_TPU[@]}" create "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" \
  --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION" "${extra[@]}"
