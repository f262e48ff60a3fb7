#!/usr/bin/env bash
# Train on the GPUs of this host (the GPU fallback: the same code with jax[cuda12] or jax[cuda13];
# JAX picks the platform by itself). Installs `.[gpu]` (or `.[cuda13]`) into .venv on first use.
# Arguments go to `python -m bioinstruct_jax.train`:
#   bash scripts/gpu/launch.sh --config configs/paper/llama2-7b-gpu-a100x8.yaml model.hf_path=/data/llama2-7b
# Variables:
#   PYTHON                 interpreter for the venv (default python3; must be >= 3.11)
#   JAX_CUDA               12 (default: extra `gpu` = jax[cuda12]) or 13 (extra `cuda13`, NVIDIA driver >= 580)
#   CUDA_VISIBLE_DEVICES   which GPUs (default: all); mesh.fsdp=-1 spreads over them
#   ATTENTION_IMPL         cudnn (default: cuDNN fused attention via jax.nn.dot_product_attention) or xla;
#                          a model.attention_impl=... argument of your own wins over it
#   XLA_PYTHON_CLIENT_MEM_FRACTION   share of GPU memory JAX preallocates (default here 0.95)
#   SKIP_INSTALL           1 = do not (re)install
#   For several hosts, set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on each
#   (bioinstruct_jax.parallel.distributed reads them) and run this script on every host; train.output_dir
#   must then be a directory every host sees (a shared filesystem or gs://).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
case "${JAX_CUDA:-12}" in
  12) extra=gpu ;;
  13) extra=cuda13 ;;
  *) echo "error: JAX_CUDA=${JAX_CUDA} (expected 12 or 13)" >&2; exit 2 ;;
esac
if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bioinstruct-jax needs Python >= 3.11 (set PYTHON=...)")'
  [ -d .venv ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q -e ".[$extra]"
fi
.venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else ".venv has Python %s; bioinstruct-jax needs >= 3.11 (remove .venv, set PYTHON=...)" % sys.version.split()[0])'
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
.venv/bin/python -c 'import jax; print("devices:", jax.devices())'
args=("$@")
case " $* " in
  *" model.attention_impl="*) ;;  # the user's own choice stays
  *) args+=("model.attention_impl=${ATTENTION_IMPL:-cudnn}") ;;
esac
exec .venv/bin/python -m bioinstruct_jax.train "${args[@]}"
