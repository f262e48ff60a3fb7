"""What a model family is (`Family`) and the HF `config.json` keys every family shares.

A family is a record of facts and two small converters, never a model class: the one decoder
(`model.decoder.Llama`) runs every family, switched by `LlamaConfig` fields (q/k/v biases, a
sliding window, tied embeddings). The family modules (`llama.py`, `qwen2.py`, `mistral.py`) each
define one `Family`; `model.families` is the one table of them.

Family converters work on plain dicts (HF config dict in, `LlamaConfig` keyword arguments out, and
back), so this module and the family modules import nothing of the config they describe.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Mapping

# Fields of the HF `rope_scaling` / `rope_parameters` dict that `config.RopeScaling` holds.
ROPE_SCALING_KEYS = ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family, as Hugging Face and llama.cpp name it.

    model_type / architecture: HF `config.json`'s `model_type` and `architectures[0]`.
    gguf_architecture: llama.cpp's `general.architecture`, None where llama.cpp writes the family
      as another one (Mistral files are `llama` files).
    gguf_rope_permuted: llama.cpp stores q/k rows permuted for its interleaved rotary layout
      (`llama`); NEOX-style families (`qwen2`) store them as HF does.
    from_hf: HF config dict, its origin (for errors) -> `LlamaConfig` keyword arguments.
    to_hf: `LlamaConfig` fields (a dict) -> the family's own HF keys, added to `common_to_hf`'s.
    presets: name -> `LlamaConfig` keyword arguments of a named architecture.
    """

    model_type: str
    architecture: str
    gguf_architecture: str | None
    gguf_rope_permuted: bool
    from_hf: Callable[[Mapping[str, Any], str], dict[str, Any]]
    to_hf: Callable[[Mapping[str, Any]], dict[str, Any]]
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def read_hf_config(source: str | pathlib.Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(HF config dict, where it came from) of a dict, a `config.json` or the folder holding one."""
    if isinstance(source, Mapping):
        return dict(source), "config dict"
    path = pathlib.Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        return dict(json.loads(path.read_text())), str(path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _rope_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta") or 10000.0))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    scaling = None
    if rope_type != "default":
        scaling = {"rope_type": rope_type, **{k: v for k, v in rope.items() if k in ROPE_SCALING_KEYS}}
    return {"rope_theta": rope_theta, "rope_scaling": scaling}


def common_from_hf(hf: Mapping[str, Any], origin: str, *, rms_norm_eps: float = 1e-5,
                   max_position_embeddings: int = 4096) -> dict[str, Any]:
    """`LlamaConfig` keyword arguments from the keys every family shares (the defaults given are
    the family's HF defaults for keys a config.json may leave out)."""
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{origin}: hidden_act={hf['hidden_act']!r}, expected 'silu'")
    eos = hf.get("eos_token_id", 2)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    try:
        return {
            "vocab_size": int(hf["vocab_size"]),
            "hidden_size": int(hf["hidden_size"]),
            "intermediate_size": int(hf["intermediate_size"]),
            "num_hidden_layers": int(hf["num_hidden_layers"]),
            "num_attention_heads": int(hf["num_attention_heads"]),
            "num_key_value_heads": int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            "head_dim": hf.get("head_dim"),
            "max_position_embeddings": int(hf.get("max_position_embeddings", max_position_embeddings)),
            "rms_norm_eps": float(hf.get("rms_norm_eps", rms_norm_eps)),
            **_rope_fields(hf),
            "rope_freq_factors": tuple(map(float, hf["rope_freq_factors"])) if hf.get("rope_freq_factors") else None,
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "bos_token_id": int(hf.get("bos_token_id") if hf.get("bos_token_id") is not None else 1),
            "eos_token_id": eos_ids,
            "pad_token_id": hf.get("pad_token_id"),
        }
    except KeyError as err:
        raise ValueError(f"{origin}: missing required key {err.args[0]!r}") from None


def common_to_hf(fields: Mapping[str, Any], head_dim: int, torch_dtype: str) -> dict[str, Any]:
    """The HF `config.json` keys every family shares, from `LlamaConfig` fields (a dict)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": fields["rope_theta"]}
    scaling = fields["rope_scaling"]
    if scaling is not None:
        rope = {**scaling, "rope_theta": fields["rope_theta"]}
        if scaling["rope_type"] == "linear":
            rope = {"rope_type": "linear", "factor": scaling["factor"], "rope_theta": fields["rope_theta"]}
    eos = fields["eos_token_id"]
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
            "tie_word_embeddings", "bos_token_id", "pad_token_id")
    return {
        **{k: fields[k] for k in keys},
        "head_dim": head_dim,
        "rope_parameters": rope,
        "eos_token_id": eos[0] if len(eos) == 1 else list(eos),
        "hidden_act": "silu",
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    }


__all__ = ("Family", "ROPE_SCALING_KEYS", "read_hf_config", "common_from_hf", "common_to_hf")
