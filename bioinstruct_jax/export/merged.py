"""Merged export: a model with every LoRA adapter folded in, written as a Hugging Face folder of its family.

`export_merged` writes `config.json`, `generation_config.json`, safetensors shards of at most
`max_shard_bytes` (`model.safetensors`, or `model-0000i-of-0000n.safetensors` +
`model.safetensors.index.json` when there is more than one) and the tokenizer files. Each tensor
is base + scale * A @ B computed in float32 by a small jitted function (in row blocks when large),
then cast, gathered to the host on its own and streamed to disk by `write_streamed`, which writes
the array's own buffer, so the extra host memory is about one tensor, never the model. The output
folder is checked and staged as every export's (`checkpoint.output`).
The PEFT adapter writer is `checkpoint.peft`; the export command and what it restores is
`export.formats` / `export.__main__`.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bioinstruct_jax.checkpoint.hf import hf_name, is_transposed, named_params
from bioinstruct_jax.checkpoint.output import (TOKENIZER_FILES, ExportError, StagedDir, hf_order, host_array,
                                               plain_tensor, write_json, write_text_files)
from bioinstruct_jax.checkpoint.safetensors_io import write_streamed
from bioinstruct_jax.checkpoint.staging import kill_point
from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer
from bioinstruct_jax.model.config import dtype_from_name
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.model.lora import lora_modules

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_DTYPE_NAMES = {np.dtype(jnp.float32): "float32", np.dtype(jnp.bfloat16): "bfloat16",
                np.dtype(jnp.float16): "float16"}

# Merged tensors whose float32 form is larger than this are computed in row blocks of about it.
MERGE_BLOCK_BYTES = 32 * 1024**2


def _merged_rows(kernel, left, right, scale, dtype, transpose: bool):
    """base + scale * left @ right in float32, cast to dtype (base = kernel, or kernel.T)."""
    # The low-rank product is formed directly in the output layout, so the add (and the cast) can
    # reuse its buffer when dtype is float32.
    delta = jnp.dot(left, right, preferred_element_type=jnp.float32)
    base = kernel.T if transpose else kernel
    return (base.astype(jnp.float32) + scale * delta).astype(dtype)


@jax.jit(static_argnames=("transpose", "dtype"))
def _merged_tensor(kernel, a, b, scale, *, transpose: bool, dtype):
    left, right = (b.T, a.T) if transpose else (a, b)  # output [rows, cols] = base + left @ right
    rows, cols = left.shape[0], right.shape[1]
    # The fewest equal blocks of at most MERGE_BLOCK_BYTES (float32) and at least 64 rows; one block
    # (the whole tensor at once) where the rows have no such split.
    need = max(-(-rows * cols * 4 // MERGE_BLOCK_BYTES), 1)
    blocks = next((n for n in range(need, rows // 64 + 1) if rows % n == 0), 1)
    if blocks == 1 or np.dtype(dtype).itemsize >= 4:  # float32: the product's buffer is the output
        return _merged_rows(kernel, left, right, scale, dtype, transpose)
    # A float32 product of a narrower output (bf16, f16) cannot share its buffer: compute the output
    # block by block, so the float32 temporary is one block, not a second full-size tensor.
    size, axis = rows // blocks, 1 if transpose else 0

    def block(i):
        start = i * size
        return _merged_rows(jax.lax.dynamic_slice_in_dim(kernel, start, size, axis),
                            jax.lax.dynamic_slice_in_dim(left, start, size, 0), right, scale, dtype, transpose)

    return jax.lax.map(block, jnp.arange(blocks)).reshape(rows, cols)


def _on_one_device(x: jax.Array) -> jax.Array:
    """`x` whole on one device. A tensor sharded over a mesh is merged where the unsharded one would
    be: a partitioned `A @ B` (and the fused add) sums in another order, and the export's bytes
    would then depend on the mesh (they differ in the last bit on some CPUs)."""
    if len(x.sharding.device_set) == 1:
        return x
    return jax.device_put(host_array(x), jax.local_devices()[0])


def merged_specs(model: Llama, dtype: Any) -> list[tuple[str, tuple[int, ...], np.dtype, Any]]:
    """(HF name, HF shape, dtype, fetch()) for every tensor of the merged model, in HF order."""
    adapters = dict(lora_modules(model))
    out = []
    for path, var in named_params(model):
        name = hf_name(path)
        transpose = is_transposed(path)
        shape = tuple(reversed(var.shape)) if transpose else tuple(var.shape)
        out_dtype = np.dtype(dtype if dtype is not None else var.get_value().dtype)
        module = adapters.get(path[:-1]) if path[-1] == "kernel" else None

        def fetch(var=var, module=module, transpose=transpose, out_dtype=out_dtype):
            if module is not None and not module.merged:
                arr = _merged_tensor(*(_on_one_device(v.get_value()) for v in (var, module.lora_a, module.lora_b)),
                                     jnp.float32(module.scale), transpose=transpose, dtype=out_dtype)
            else:
                arr = plain_tensor(var.get_value(), transpose=transpose, dtype=out_dtype)
            try:
                return host_array(arr)
            finally:
                del arr

        out.append((name, shape, out_dtype, fetch))
    out.sort(key=lambda s: hf_order(s[0]))
    return out


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Greedy, order-preserving split into shards of at most `max_shard_bytes` (a larger tensor
    gets a shard of its own), as `save_pretrained` does."""
    if max_shard_bytes <= 0:
        raise ExportError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[list[str]] = []
    used = 0
    for name, nbytes in sizes:
        if not shards or (used + nbytes > max_shard_bytes and shards[-1]):
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def _save_tokenizer(tokenizer: Any, out_dir: pathlib.Path) -> list[str]:
    """Tokenizer files into out_dir: an HF tokenizer folder copied as is, anything else (a
    SentencePiece `.model`, a `tokenizer.json`, a tokenizer object) through its `save()`."""
    before = set(os.listdir(out_dir))
    if hasattr(tokenizer, "save") and not isinstance(tokenizer, (str, os.PathLike)):
        tokenizer.save(out_dir)
    else:
        src = pathlib.Path(tokenizer)
        copied = [f for f in TOKENIZER_FILES if (src / f).is_file()] if src.is_dir() else []
        if any(f in copied for f in ("tokenizer.model", "tokenizer.json")):
            for f in copied:
                shutil.copyfile(src / f, out_dir / f)
        else:
            load_tokenizer(src).save(out_dir)
    return sorted(set(os.listdir(out_dir)) - before)


def export_merged(model: Llama, out_dir: str | pathlib.Path, *, tokenizer_dir: Any = None, dtype: Any = None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
                  extra_files: dict[str, str] | None = None) -> pathlib.Path:
    """Write `model` with every LoRA adapter folded in as an HF directory (its family's config.json); returns it.

    dtype: of the written weights (default: each parameter's own dtype); the merge itself is done
    in float32. tokenizer_dir: a tokenizer folder or file, or an object with `save(dir)`; None
    writes no tokenizer files. extra_files: name -> text written beside (the model card). The
    model is left unchanged.
    """
    out_dir = pathlib.Path(out_dir)
    specs = merged_specs(model, None if dtype is None else dtype_from_name(dtype))
    dtypes = {s[2] for s in specs}
    if len(dtypes) != 1:
        raise ExportError(f"parameters have mixed dtypes {sorted(map(str, dtypes))}; pass dtype= to export one")
    out_dtype = dtypes.pop()
    if out_dtype not in _DTYPE_NAMES:
        raise ExportError(f"cannot export dtype {out_dtype}; use float32, bfloat16 or float16")
    nbytes = {name: math.prod(shape) * dt.itemsize for name, shape, dt, _ in specs}
    shards = plan_shards([(s[0], nbytes[s[0]]) for s in specs], max_shard_bytes)
    by_name = {s[0]: s for s in specs}
    config = model.config
    if config.rope_freq_factors is not None and config.rope_scaling is None:
        raise ExportError("the model's rotary frequency factors (a GGUF rope_freqs.weight) match no HF rope_scaling "
                          "rule, so config.json cannot state them; export it with --format gguf")
    with StagedDir(out_dir, overwrite) as tmp:
        write_json(tmp / "config.json", config.to_hf(_DTYPE_NAMES[out_dtype]))
        gen = {"_from_model_config": True, "bos_token_id": config.bos_token_id,
               "eos_token_id": config.to_hf()["eos_token_id"]}
        if config.pad_token_id is not None:
            gen["pad_token_id"] = config.pad_token_id
        write_json(tmp / "generation_config.json", gen)
        if tokenizer_dir is not None:
            _save_tokenizer(tokenizer_dir, tmp)
        files = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        weight_map = {}
        for count, (filename, names) in enumerate(zip(files, shards), 1):
            write_streamed(tmp / filename, [by_name[n][:3] for n in names], lambda n: by_name[n][3](),
                           metadata={"format": "pt"})
            weight_map.update({n: filename for n in names})
            kill_point(count)
        if len(shards) > 1:
            write_json(tmp / "model.safetensors.index.json",
                        {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map})
        write_text_files(tmp, extra_files)
    return out_dir
