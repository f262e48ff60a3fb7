#!/usr/bin/env bash
# Install the project on every worker: clone REPO_URL (or copy this checkout), then
# `pip install -e .[tpu]` into REMOTE_DIR/.venv. Variables: scripts/tpu/env.sh.
source "$(dirname "$0")/env.sh"
if [ -n "$REPO_URL" ]; then
  on_all_workers "rm -rf $REMOTE_DIR && git clone $REPO_URL $REMOTE_DIR"
else
  tarball="$(mktemp /tmp/bioinstruct-XXXX.tgz)"
  git -C "$(dirname "$0")/../.." archive --format=tar.gz -o "$tarball" HEAD
  "${GCLOUD_TPU[@]}" scp "$tarball" "$TPU_NAME:/tmp/bioinstruct.tgz" --zone "$TPU_ZONE" "${PROJECT_FLAG[@]}" --worker=all
  on_all_workers "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf /tmp/bioinstruct.tgz -C $REMOTE_DIR"
  rm -f "$tarball"
fi
on_all_workers "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e '.[tpu]' && .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'"
