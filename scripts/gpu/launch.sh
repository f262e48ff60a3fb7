#!/usr/bin/env bash
# Train on the GPUs of this host (the GPU fallback: the same code with jax[cuda12]; JAX picks the
# platform by itself). Installs `.[gpu]` into .venv on first use. Arguments go to
# `python -m bioinstruct_jax.train`:
#   bash scripts/gpu/launch.sh --config configs/paper/llama2-7b-gpu-a100x8.yaml model.hf_path=/data/llama2-7b
# Variables:
#   CUDA_VISIBLE_DEVICES   which GPUs (default: all); mesh.fsdp=-1 spreads over them
#   ATTENTION_IMPL         cudnn (default: cuDNN fused attention via jax.nn.dot_product_attention) or xla
#   XLA_PYTHON_CLIENT_MEM_FRACTION   share of GPU memory JAX preallocates (default here 0.95)
#   SKIP_INSTALL           1 = do not (re)install
#   For several hosts, set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on each
#   (bioinstruct_jax.distributed reads them) and run this script on every host.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  [ -d .venv ] || python3 -m venv .venv
  .venv/bin/pip install -q -e '.[gpu]'
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
.venv/bin/python -c 'import jax; print("devices:", jax.devices())'
exec .venv/bin/python -m bioinstruct_jax.train "$@" "model.attention_impl=${ATTENTION_IMPL:-cudnn}"
