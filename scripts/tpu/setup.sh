#!/usr/bin/env bash
# Install the project on every worker: clone REPO_URL (or copy this checkout), then create
# REMOTE_DIR/.venv with Python $PYTHON_VERSION (default 3.11) through uv, and install `.[tpu]`.
# The TPU images ship Python 3.10 (Ubuntu 22.04), older than the project's >= 3.11, so the image's
# python3 is used only to install uv (pip --user); uv fetches a standalone CPython build.
# Variables: scripts/tpu/env.sh.
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
install="set -e; cd $REMOTE_DIR"
install+="; python3 -m pip --version >/dev/null 2>&1 || { sudo apt-get update -q && sudo apt-get install -y -q python3-pip; }"
install+="; command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || python3 -m pip install -q --user uv"
install+="; UV=\$(command -v uv || echo ~/.local/bin/uv)"
install+="; \$UV venv --python $PYTHON_VERSION .venv"
install+="; \$UV pip install -q --python .venv/bin/python -e '.[tpu]'"
install+="; .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'"
install+="; .venv/bin/python -c 'import jax; jax.distributed.initialize(); print(jax.process_index(), jax.device_count())'"
on_all_workers "$install"
