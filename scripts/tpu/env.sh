#!/usr/bin/env bash
# Shared settings of the TPU scripts (sourced, never run). Every variable can be set in the
# environment beforehand; the defaults are shown.
#   TPU_NAME      name of the TPU VM / pod slice                        (bioinstruct-tpu)
#   TPU_ZONE      zone                                                   (europe-west4-a)
#   TPU_TYPE      accelerator type: v3-8, v4-8, v5litepod-8, v4-32 ...   (v3-8)
#   TPU_VERSION   runtime version (software image)                      (tpu-ubuntu2204-base)
#   GCP_PROJECT   project id; empty = gcloud's configured project        ()
#   TPU_SPOT      1 = create a spot (preemptible) TPU                    (0)
#   REPO_URL      git URL the workers clone; empty = copy this checkout  ()
#   REMOTE_DIR    project directory on every worker                      (~/bioinstruct-jax)
#   RUN_DIR       train.output_dir; use gs://BUCKET/... on pod slices    (runs/$TPU_NAME)
set -euo pipefail
TPU_NAME="${TPU_NAME:-bioinstruct-tpu}"
TPU_ZONE="${TPU_ZONE:-europe-west4-a}"
TPU_TYPE="${TPU_TYPE:-v3-8}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
GCP_PROJECT="${GCP_PROJECT:-}"
TPU_SPOT="${TPU_SPOT:-0}"
REPO_URL="${REPO_URL:-}"
REMOTE_DIR="${REMOTE_DIR:-~/bioinstruct-jax}"
RUN_DIR="${RUN_DIR:-runs/$TPU_NAME}"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
PROJECT_FLAG=()
if [ -n "$GCP_PROJECT" ]; then PROJECT_FLAG=(--project "$GCP_PROJECT"); fi
# Run a command on every worker of the slice.
on_all_workers() {
  "${GCLOUD_TPU[@]}" ssh "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$1"
}
