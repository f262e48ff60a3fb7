"""GGUF (llama.cpp) files of the `llama` and `qwen2` architectures -> our NNX model, one tensor at a time.

A `.gguf` file (or a folder holding exactly one) is read with the `gguf` package's `GGUFReader`
(memory-mapped; nothing is parsed by hand). Its `general.architecture` names the model family
(`model.families.by_gguf_architecture`), and its `<arch>.*` metadata becomes an HF-style config dict
(`config_dict`) and so a `LlamaConfig`; embeddings are tied when the file has no `output.weight`.
`GGUFTensorSource` gives the tensors (weights, and Qwen2's `attn_q/k/v.bias`) under their Hugging
Face names, in HF's [out, in] layout, with llama.cpp's rotary row permutation of `attn_q` /
`attn_k` undone where the family has one (`permute_rows` applies it, for the GGUF export), so
`checkpoint.hf.fill_params`
streams them into their shards exactly as it does safetensors: each tensor is dequantized
(`gguf.quants.dequantize`, float32) when first asked for and only the last one is kept, so the
host holds one dequantized tensor at a time.

LLaMA-3.1 / 3.2 files carry `rope_freqs.weight`, per-pair factors that llama.cpp divides the base
rotary frequencies by: they become the config's `rope_freq_factors` (the model divides by them the
same way), plus the HF `llama3` rope_scaling that gives the same factors where one does (for an HF
export of the model).

Every quantization type `gguf.quants` can dequantize is accepted (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
Q5_1, Q8_0, the K-quants Q2_K ... Q6_K, the IQ types); anything else, an architecture no family
reads or a model feature the decoder lacks is a one-line error naming the file (and the tensor).
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import numpy as np

from bioinstruct_jax.checkpoint.errors import CheckpointError
from bioinstruct_jax.model import families
from bioinstruct_jax.model.config import LlamaConfig

_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
# Tensors llama.cpp stores that are read into the config (`config_dict`), not into the weights.
_IGNORED = {"rope_freqs.weight"}


def is_gguf(path: str | pathlib.Path) -> bool:
    """A `.gguf` file, or a folder with a `.gguf` file and no HF `config.json`."""
    p = pathlib.Path(path)
    if p.is_file():
        return p.suffix.lower() == ".gguf"
    return p.is_dir() and not (p / "config.json").is_file() and any(p.glob("*.gguf"))


def find_gguf(path: str | pathlib.Path) -> pathlib.Path:
    """The GGUF file at `path`: the file itself, or the only `.gguf` in the folder."""
    p = pathlib.Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such GGUF file or folder")
    files = sorted(p.glob("*.gguf"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise FileNotFoundError(f"{p}: expected exactly one .gguf file in the folder, found {found}; "
                                "pass the file itself")
    return files[0]


def _reader_class():
    from gguf import GGUFReader

    class _Reader(GGUFReader):
        """`GGUFReader` that slices a plain ndarray view of its memory map instead of the
        `np.memmap` itself: the reader takes ~150k slices for a 49k-token vocabulary, and each
        memmap slice costs a Python-level `__array_finalize__` (about half the parse time). The
        view shares the map's buffer, so tensors stay memory-mapped."""

        def _get(self, offset, dtype, count=1, override_order=None):
            if type(self.data) is np.memmap:
                self._memmap, self.data = self.data, self.data.view(np.ndarray)
            return super()._get(offset, dtype, count, override_order)

    return _Reader


def open_reader(path: str | pathlib.Path):
    """`gguf.GGUFReader` over the file, with a one-line error for a file it cannot read."""
    f = find_gguf(path)
    try:
        return _reader_class()(f, "r")
    except Exception as err:  # the reader raises ValueError / struct errors / OSError on damage
        raise CheckpointError(f"{f}: not a readable GGUF file ({type(err).__name__}: {err})") from None


def metadata(reader: Any) -> dict[str, Any]:
    """Every key-value field of the file, decoded (`ReaderField.contents()`), token lists excepted."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.scores"):
            out[key] = len(field.data)  # the count is enough here; the tokenizer reads the lists itself
            continue
        try:
            out[key] = field.contents()
        except Exception:  # a field type this gguf version cannot decode: not one we need
            continue
    return out


def config_dict(reader: Any, where: str | pathlib.Path) -> dict[str, Any]:
    """An HF `config.json`-style dict from the `<arch>.*` metadata (see `LlamaConfig.from_hf`)."""
    meta = metadata(reader)
    arch = meta.get("general.architecture")
    family = families.by_gguf_architecture(arch)
    if family is None:
        raise CheckpointError(f"{where}: GGUF architecture {arch!r} is not supported "
                              f"(supported: {', '.join(families.gguf_architectures())})")

    def key(name: str, default: Any = KeyError) -> Any:
        full = f"{arch}.{name}"
        if full in meta:
            return meta[full]
        if default is KeyError:
            raise CheckpointError(f"{where}: GGUF metadata lacks {full!r}")
        return default

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    head_dim = int(key("attention.key_length", hidden // heads))
    rot = key("rope.dimension_count", head_dim)
    if int(rot) != head_dim:
        raise CheckpointError(f"{where}: {arch}.rope.dimension_count={rot} != head_dim={head_dim} "
                              "(partial rotary embeddings are not supported)")
    names = {t.name for t in reader.tensors}
    vocab = key("vocab_size", meta.get("tokenizer.ggml.tokens"))
    if vocab is None:
        raise CheckpointError(f"{where}: GGUF metadata has neither {arch}.vocab_size nor a token list")
    cfg: dict[str, Any] = {
        "model_type": family.model_type,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(key("context_length", 4096)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
    }
    _add_rope_scaling(cfg, reader, key, names, where, head_dim)
    for ours, theirs in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                         ("pad_token_id", "padding_token_id")):
        value = meta.get(f"tokenizer.ggml.{theirs}")
        if value is not None:
            cfg[ours] = int(value)
    return cfg


def _add_rope_scaling(cfg: dict[str, Any], reader: Any, key: Any, names: set[str], where: Any, head_dim: int) -> None:
    """The rotary scaling keys of `cfg`: `<arch>.rope.scaling.*`, and `rope_freqs.weight` as factors."""
    scaling = key("rope.scaling.type", None)
    if scaling not in (None, "none"):
        rope: dict[str, Any] = {"rope_type": scaling, "factor": float(key("rope.scaling.factor", 1.0))}
        if key("rope.scaling.original_context_length", None) is not None:
            rope["original_max_position_embeddings"] = int(key("rope.scaling.original_context_length"))
        cfg["rope_scaling"] = rope
    if "rope_freqs.weight" in names:
        factors = _rope_freq_factors(reader, where, head_dim)
        cfg["rope_freq_factors"] = factors
        if "rope_scaling" not in cfg:  # what HF's config.json calls it, for an HF export of the model
            llama3 = llama3_scaling_from_factors(factors, cfg["rope_theta"], head_dim,
                                                 key("rope.scaling.original_context_length", None))
            if llama3 is not None:
                cfg["rope_scaling"] = llama3


def _rope_freq_factors(reader: Any, where: str | pathlib.Path, head_dim: int) -> list[float]:
    """The `rope_freqs.weight` tensor: llama.cpp divides each rotary pair's base frequency by it."""
    from gguf.quants import dequantize

    t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    factors = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
    if factors.shape != (head_dim // 2,) or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        raise CheckpointError(f"{where}: tensor 'rope_freqs.weight' must hold {head_dim // 2} positive factors "
                              f"(head_dim / 2), got shape {tuple(factors.shape)}")
    return [float(f) for f in factors]


def llama3_scaling_from_factors(factors: list[float], rope_theta: float, head_dim: int,
                                original_context: int | None = None) -> dict[str, Any] | None:
    """HF's `llama3` rope_scaling that gives exactly these frequency factors (LLaMA 3.1 / 3.2 use
    low 1, high 4 over 8192 positions, with factor 8 or 32), or None when none does."""
    factor = max(factors)
    if factor <= 1.0:
        return None
    base = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * np.pi / base
    for old_len in dict.fromkeys([original_context or 8192, 8192]):
        low, high = 1.0, 4.0
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old_len / low, base / factor, base)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
        if np.allclose(base / inv, factors, rtol=1e-5, atol=0):
            return {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": int(old_len)}
    return None


def read_config(path: str | pathlib.Path, reader: Any = None):
    """The `LlamaConfig` of a GGUF file (metadata only; no tensor is read)."""
    f = find_gguf(path)
    try:
        return LlamaConfig.from_hf(config_dict(reader if reader is not None else open_reader(f), f))
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{f}: {err}") from None


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF name of a llama.cpp tensor name, e.g. blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight
    (and blk.3.attn_q.bias -> model.layers.3.self_attn.q_proj.bias)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def gguf_tensor_name(hf_tensor: str) -> str:
    """llama.cpp name of an HF tensor name (the inverse of `hf_tensor_name`)."""
    for ours, theirs in _GLOBAL_NAMES.items():
        if theirs == hf_tensor:
            return ours
    m = re.fullmatch(r"model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)", hf_tensor)
    short = {v: k for k, v in _LAYER_NAMES.items()}.get(m.group(2)) if m else None
    if short is None:
        raise ValueError(f"no llama.cpp name for tensor {hf_tensor!r}")
    return f"blk.{m.group(1)}.{short}.{m.group(3)}"


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary permutation of HF q/k rows (as its converter writes them): per head, HF's
    two halves become interleaved (even, odd) row pairs. `unpermute_rows` undoes it."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q/k rows: per head, its interleaved (even, odd) row
    pairs go back to HF's two halves."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class GGUFTensorSource:
    """The tensors of one GGUF file under HF names, shaped and laid out as in HF checkpoints.

    Same interface as `checkpoint.hf._TensorSource` (`directory`, `weight_map`, `file_of`, `shape`,
    `get`). `get` dequantizes to float32 and keeps only the last tensor, so the sharded fill,
    which asks for the same tensor once per shard, dequantizes each tensor once.
    """

    def __init__(self, path: str | pathlib.Path, reader: Any = None, config: Any = None):
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import _type_traits  # the dequantizable types, as `dequantize` itself dispatches

        self.file = find_gguf(path)
        self.directory = self.file  # error messages name the file
        self.reader = reader if reader is not None else open_reader(self.file)
        self.config = config if config is not None else read_config(self.file, self.reader)
        supported = set(_type_traits) | {GGMLQuantizationType.F32, GGMLQuantizationType.F16}
        self._tensors: dict[str, Any] = {}
        for t in self.reader.tensors:
            name = hf_tensor_name(t.name)
            if name is None:
                if t.name in _IGNORED:
                    continue
                raise CheckpointError(f"{self.file}: unexpected tensor {t.name!r} (shape {tuple(int(x) for x in reversed(t.shape))}); "
                                      f"not part of a {self.config.model_type} model")
            if t.tensor_type not in supported:
                raise CheckpointError(f"{self.file}: tensor {t.name!r} has quantization type {t.tensor_type.name}, "
                                      "which the gguf package cannot dequantize")
            self._tensors[name] = t
        self.weight_map = {name: self.file.name for name in self._tensors}
        self._rope_permuted = families.by_model_type(self.config.model_type).gguf_rope_permuted
        self._cached: tuple[str, np.ndarray] | None = None

    def file_of(self, name: str) -> pathlib.Path:
        return self.file

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in reversed(self._tensors[name].shape))  # ggml lists dims innermost first

    def gguf_name(self, name: str) -> str:
        return self._tensors[name].name

    def get(self, name: str) -> np.ndarray:
        if self._cached is not None and self._cached[0] == name:
            return self._cached[1]
        from gguf.quants import dequantize

        t = self._tensors[name]
        self._cached = None  # drop the previous tensor before making the next one
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(self.shape(name))
        except Exception as err:
            raise CheckpointError(f"{self.file}: tensor {t.name!r} ({t.tensor_type.name}) cannot be dequantized "
                                  f"({type(err).__name__}: {err})") from None
        if self._rope_permuted and name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            w = unpermute_rows(w, self.config.num_attention_heads)
        elif self._rope_permuted and name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            w = unpermute_rows(w, self.config.num_key_value_heads)
        self._cached = (name, w)
        return w


__all__ = ["is_gguf", "find_gguf", "open_reader", "metadata", "config_dict", "read_config", "hf_tensor_name",
           "gguf_tensor_name", "permute_rows", "unpermute_rows", "llama3_scaling_from_factors", "GGUFTensorSource"]
