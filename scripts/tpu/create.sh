#!/usr/bin/env bash
# Create a TPU VM or pod slice; runtime and zone follow TPU_TYPE unless set (scripts/tpu/env.sh).
#   TPU_TYPE=v4-8 bash scripts/tpu/create.sh            # us-central2-b, tpu-ubuntu2204-base
#   TPU_TYPE=v5litepod-16 TPU_SPOT=1 bash scripts/tpu/create.sh
# TPU_SPOT=1 adds --spot; TPU_AUTOCHECKPOINT=1 creates through `gcloud alpha` with
# --autocheckpoint-enabled (v2-v4 and v5e only; refused for other types).
source "$(dirname "$0")/env.sh"
cmd=("${GCLOUD_TPU[@]}")
extra=()
if [ "$TPU_SPOT" = "1" ]; then extra+=(--spot); fi
if [ "$TPU_AUTOCHECKPOINT" = "1" ]; then
  if ! supports_autocheckpoint "$TPU_TYPE"; then
    echo "error: TPU_AUTOCHECKPOINT=1: Cloud TPU Autocheckpoint supports v2-v4 and v5e, not $TPU_TYPE" >&2
    exit 2
  fi
  cmd=(gcloud alpha compute tpus tpu-vm)
  extra+=(--autocheckpoint-enabled)
fi
echo "creating $TPU_NAME: $TPU_TYPE ($TPU_HOSTS worker(s)) in $TPU_ZONE, runtime $TPU_VERSION"
"${cmd[@]}" create "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" \
  --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION" "${extra[@]}"
