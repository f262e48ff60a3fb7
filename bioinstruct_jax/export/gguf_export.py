"""GGUF export: the merged model as one llama.cpp / Ollama file, written with the `gguf` package's `GGUFWriter`.

`export_gguf(model, out_dir, tokenizer=..., dtype=...)` writes `OUT/model-<TYPE>.gguf` (TYPE F32,
F16, BF16 or Q8_0) holding:
- the `llama.*` metadata llama.cpp needs (context length, widths, heads, rotary base and
  dimension count, RMS epsilon, vocabulary size, `general.file_type`), `general.name`;
- every tensor of the merged model (LoRA folded in, in float32, by `export.merged`) under llama.cpp's
  names, q / k rows permuted as llama.cpp's converter does (`checkpoint.gguf.permute_rows`; the
  reader undoes it); norms stay F32 as llama.cpp keeps them, 2-D tensors take the chosen type
  (`q8_0` through `gguf.quants.quantize`; a tensor whose rows are not whole Q8_0 blocks is F16, as
  llama.cpp's converter falls back);
- a llama3-scaled or GGUF-read model's rotary frequency factors as `rope_freqs.weight`, linear
  scaling as `llama.rope.scaling.*`;
- the tokenizer and chat template (`export.gguf_tokenizer`).
Tensors are written one at a time (tensor infos first, then each tensor's data as it is merged),
so the host holds about one tensor. The folder is staged as every export's (`checkpoint.output`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import gguf
import jax.numpy as jnp
import numpy as np

from bioinstruct_jax.checkpoint import gguf as gguf_reader
from bioinstruct_jax.checkpoint.output import ExportError, StagedDir, write_text_files
from bioinstruct_jax.checkpoint.staging import kill_point
from bioinstruct_jax.export.gguf_tokenizer import add_tokenizer
from bioinstruct_jax.export.merged import merged_specs
from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.model.rope import rope_inverse_frequencies

GGUF_DTYPES = ("float32", "float16", "bfloat16", "q8_0")
_Q = gguf.GGMLQuantizationType
_TENSOR_TYPE = {"float32": _Q.F32, "float16": _Q.F16, "bfloat16": _Q.BF16, "q8_0": _Q.Q8_0}
_FILE_TYPE = {"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
              "bfloat16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def gguf_file_name(dtype: str) -> str:
    """The file name of a GGUF export of this dtype, e.g. model-Q8_0.gguf."""
    return f"model-{_TENSOR_TYPE[dtype].name}.gguf"


def _tensor_type(name: str, shape: tuple[int, ...], dtype: str) -> gguf.GGMLQuantizationType:
    """llama.cpp's choice per tensor: norms (1-D) F32; the rest the chosen type, F16 where Q8_0 blocks do not fit."""
    if len(shape) == 1:
        return _Q.F32
    qtype = _TENSOR_TYPE[dtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else _Q.F16


def encode_tensor(arr: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """A float tensor as stored in the file: F32 / F16 as is, BF16 / Q8_0 as `gguf.quants.quantize` bytes."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == _Q.F32:
        return arr
    if qtype == _Q.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr, qtype)


def _rope_factors(config: LlamaConfig) -> np.ndarray | None:
    """What llama.cpp divides the base rotary frequencies by, for a llama3-scaled (or GGUF-read) model."""
    if config.rope_freq_factors is not None:
        return np.asarray(config.rope_freq_factors, dtype=np.float32)
    if config.rope_scaling is None or config.rope_scaling.rope_type != "llama3":
        return None
    base = rope_inverse_frequencies(dataclasses.replace(config, rope_scaling=None))
    return np.asarray(base / rope_inverse_frequencies(config), dtype=np.float32)


def _add_llama_metadata(writer: gguf.GGUFWriter, config: LlamaConfig, dtype: str, name: str) -> None:
    writer.add_name(name)
    writer.add_file_type(int(_FILE_TYPE[dtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = config.resolved_head_dim
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    scaling = config.rope_scaling
    if scaling is not None and scaling.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling.factor)


def export_gguf(model: Llama, out_dir: str | pathlib.Path, *, tokenizer: Any, dtype: str = "float32",
                name: str = "bioinstruct-jax", overwrite: bool = False,
                extra_files: dict[str, str] | None = None) -> pathlib.Path:
    """Write `model` (LoRA merged) with its tokenizer as OUT/model-<TYPE>.gguf; returns out_dir.

    dtype: float32, float16, bfloat16 or q8_0. tokenizer: a tokenizer path (folder, file, GGUF) or
    a `Tokenizer`; a GGUF file needs one. extra_files: name -> text written beside the file (the
    model card)."""
    if dtype not in GGUF_DTYPES:
        raise ExportError(f"--dtype {dtype!r}: a GGUF export takes {', '.join(GGUF_DTYPES)}")
    if model.config.model_type != "llama":
        raise ExportError(f"a GGUF export writes llama.cpp's `llama` architecture; this is a {model.config.model_type} "
                          "model (q/k/v biases or a sliding window llama.cpp's llama would drop): use --format merged")
    if tokenizer is None:
        raise ExportError("a GGUF export needs the tokenizer (pass --tokenizer): llama.cpp reads it from the file")
    out_dir = pathlib.Path(out_dir)
    config = model.config
    specs = merged_specs(model, jnp.float32)
    factors = _rope_factors(config)
    with StagedDir(out_dir, overwrite) as tmp:
        path = tmp / gguf_file_name(dtype)
        writer = gguf.GGUFWriter(str(path), "llama")
        _add_llama_metadata(writer, config, dtype, name)
        add_tokenizer(writer, tokenizer, config.vocab_size)
        plan = []  # (gguf name, fetch, permute heads, tensor type)
        for hf, shape, _, fetch in specs:
            gname = gguf_reader.gguf_tensor_name(hf)
            heads = (config.num_attention_heads if hf.endswith("q_proj.weight")
                     else config.num_key_value_heads if hf.endswith("k_proj.weight") else None)
            qtype = _tensor_type(gname, shape, dtype)
            nbytes = math.prod(shape) * gguf.GGML_QUANT_SIZES[qtype][1] // gguf.GGML_QUANT_SIZES[qtype][0]
            stored = np.float32 if qtype == _Q.F32 else np.float16 if qtype == _Q.F16 else np.uint8
            byte_shape = shape if stored != np.uint8 else gguf.quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(gname, byte_shape, np.dtype(stored), nbytes,
                                   raw_dtype=qtype if stored == np.uint8 else None)
            plan.append((gname, fetch, heads, qtype))
        if factors is not None:
            writer.add_tensor_info("rope_freqs.weight", factors.shape, factors.dtype, factors.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        try:
            for count, (gname, fetch, heads, qtype) in enumerate(plan, 1):
                arr = fetch()
                if heads is not None:
                    arr = gguf_reader.permute_rows(arr, heads)
                writer.write_tensor_data(encode_tensor(arr, qtype))
                del arr
                kill_point(count)
            if factors is not None:
                writer.write_tensor_data(factors)
        finally:
            writer.close()
        write_text_files(tmp, extra_files)
    return out_dir


__all__ = ["GGUF_DTYPES", "encode_tensor", "export_gguf", "gguf_file_name"]
