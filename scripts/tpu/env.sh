#!/usr/bin/env bash
# Shared settings of the TPU scripts (sourced, never run). Every variable can be set in the
# environment beforehand; the defaults are shown (derived ones say from what).
#   TPU_NAME        name of the TPU VM / pod slice                                (bioinstruct-tpu)
#   TPU_TYPE        accelerator type: v3-8, v4-8, v5litepod-8, v4-16, v5litepod-16 ...  (v3-8)
#   TPU_ZONE        zone; default from TPU_TYPE: v2/v3 europe-west4-a, v4 us-central2-b (the only
#                   v4 zone), v5litepod us-west4-a, v5p us-east5-a, v6e us-east1-d
#   TPU_VERSION     runtime (software image); default from TPU_TYPE: tpu-ubuntu2204-base for
#                   v2-v4, v2-alpha-tpuv5-lite for v5litepod, v2-alpha-tpuv5 for v5p,
#                   v2-alpha-tpuv6e for v6e
#   GCP_PROJECT     project id; empty = gcloud's configured project               ()
#   TPU_SPOT        1 = create a Spot TPU (deleted on preemption: RUN_DIR must be gs://)  (0)
#   TPU_AUTOCHECKPOINT  1 = `gcloud alpha ... --autocheckpoint-enabled` (v2-v4, v5e): on a
#                   maintenance event the TPU sends SIGTERM and waits up to 5 minutes, and
#                   training saves a checkpoint at a step all hosts agree on          (0)
#   PYTHON_VERSION  Python of the venv on the workers, installed by uv (the TPU images ship
#                   Python 3.10; the project needs >= 3.11)                       (3.11)
#   REPO_URL        git URL the workers clone; empty = copy this checkout         ()
#   REMOTE_DIR      project directory on every worker                             (~/bioinstruct-jax)
#   RUN_DIR         train.output_dir; must be gs://BUCKET/... on a pod slice (each worker
#                   writes its share of a checkpoint) or a Spot TPU                (runs/$TPU_NAME)
# Derived: TPU_HOSTS (workers in the slice), TPU_MULTI_HOST (1 when more than one).
set -euo pipefail
TPU_NAME="${TPU_NAME:-bioinstruct-tpu}"
TPU_TYPE="${TPU_TYPE:-v3-8}"

# generation and size of an accelerator type: v4-16 -> v4 16, v5litepod-16 -> v5litepod 16
tpu_generation() { echo "${1%-*}"; }
tpu_size() { echo "${1##*-}"; }

# Workers of a slice. v2/v3/v4/v5p types count TensorCores (8 per host); v5litepod and v6e count
# chips: up to 8 on one host, 4 per host in larger slices.
tpu_hosts() {
  local gen size
  gen="$(tpu_generation "$1")"; size="$(tpu_size "$1")"
  case "$size" in ''|*[!0-9]*) echo "error: cannot read the size of TPU_TYPE=$1 (expected e.g. v4-8)" >&2; return 1 ;; esac
  case "$gen" in
    v2|v3|v4|v5p) echo $(( size <= 8 ? 1 : size / 8 )) ;;
    v5litepod|v5e|v6e) echo $(( size <= 8 ? 1 : size / 4 )) ;;
    *) echo "error: unknown TPU generation in TPU_TYPE=$1 (known: v2, v3, v4, v5litepod, v5p, v6e)" >&2; return 1 ;;
  esac
}

default_zone() {
  case "$(tpu_generation "$1")" in
    v2|v3) echo europe-west4-a ;;
    v4) echo us-central2-b ;;
    v5litepod|v5e) echo us-west4-a ;;
    v5p) echo us-east5-a ;;
    v6e) echo us-east1-d ;;
    *) echo europe-west4-a ;;
  esac
}

default_runtime() {
  case "$(tpu_generation "$1")" in
    v5litepod|v5e) echo v2-alpha-tpuv5-lite ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v6e) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

supports_autocheckpoint() {  # Cloud TPU Autocheckpoint: v2-v4 and v5e
  case "$(tpu_generation "$1")" in v2|v3|v4|v5litepod|v5e) return 0 ;; *) return 1 ;; esac
}

TPU_HOSTS="$(tpu_hosts "$TPU_TYPE")"
TPU_MULTI_HOST=$(( TPU_HOSTS > 1 ? 1 : 0 ))
TPU_ZONE="${TPU_ZONE:-$(default_zone "$TPU_TYPE")}"
TPU_VERSION="${TPU_VERSION:-$(default_runtime "$TPU_TYPE")}"
GCP_PROJECT="${GCP_PROJECT:-}"
TPU_SPOT="${TPU_SPOT:-0}"
TPU_AUTOCHECKPOINT="${TPU_AUTOCHECKPOINT:-0}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
REPO_URL="${REPO_URL:-}"
REMOTE_DIR="${REMOTE_DIR:-~/bioinstruct-jax}"
RUN_DIR="${RUN_DIR:-runs/$TPU_NAME}"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
PROJECT_FLAG=()
if [ -n "$GCP_PROJECT" ]; then PROJECT_FLAG=(--project "$GCP_PROJECT"); fi

# Run a command on every worker of the slice (a single-host TPU has one: worker 0).
on_all_workers() {
  "${GCLOUD_TPU[@]}" ssh "$TPU_NAME" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$1"
}

# A pod slice writes each checkpoint from every worker, and a Spot TPU's disk is deleted with it:
# both need a bucket. $1: the output directory the run will use.
require_bucket_when_needed() {
  local dir="$1"
  case "$dir" in gs://*) return 0 ;; esac
  if [ "$TPU_MULTI_HOST" = "1" ]; then
    echo "error: RUN_DIR=$dir is a local path, but $TPU_TYPE has $TPU_HOSTS workers: each writes its share of every" \
         "checkpoint, so use a bucket (RUN_DIR=gs://BUCKET/runs/$TPU_NAME)" >&2
    return 1
  fi
  if [ "$TPU_SPOT" = "1" ]; then
    echo "error: RUN_DIR=$dir is a local path on a Spot TPU, which is deleted (disk included) when preempted;" \
         "use a bucket (RUN_DIR=gs://BUCKET/runs/$TPU_NAME)" >&2
    return 1
  fi
}
