"""The model factory: a run config -> its tokenizer, its architecture, and base model + LoRA on a mesh.

Every place that builds the model of a training run builds it here, so training, resume, restore
for inference / export and the memory planner agree on the same modules, dtypes and RNG streams:
  - `load_run_tokenizer`: the tokenizer named by model.tokenizer (or found in model.hf_path);
  - `resolve_llama_config`: the architecture, from hf_path's config.json / GGUF metadata or the
    preset (vocabulary from the tokenizer); `llama_config_from_dict` reads it back from a
    checkpoint's model signature;
  - `model_signature`: what a checkpoint must agree on with the run that resumes from it;
  - `init_model`: a preset with seeded random weights + LoRA, unsharded (a pure function of the
    config: `sharding.shard_model` creates it straight into its shards, `nnx.eval_shape` abstractly);
  - `build_model`: the base model (HF / GGUF weights streamed onto the mesh, or `init_model`) + LoRA,
    sharded, in train mode.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
from flax import nnx

from bioinstruct_jax.checkpoint import gguf
from bioinstruct_jax.checkpoint.hf import load_pretrained
from bioinstruct_jax.config import ConfigError, RunConfig, to_dict
from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer
from bioinstruct_jax.model.config import LlamaConfig, RopeScaling, dtype_from_name
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.model.lora import apply_lora
from bioinstruct_jax.parallel import sharding


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, default)
    return value() if callable(value) else value


def load_run_tokenizer(cfg: RunConfig):
    """The tokenizer named by model.tokenizer (or found in model.hf_path); None when neither is set."""
    path = cfg.model.tokenizer or cfg.model.hf_path
    if not path:
        return None
    if not pathlib.Path(path).exists() and "://" not in path:
        raise ConfigError(f"model.tokenizer: {path} does not exist")
    return load_tokenizer(path)


def run_tokenizer_path(cfg: RunConfig) -> str | None:
    """Where a run's tokenizer lives (model.tokenizer, else the model.hf_path folder); None for neither."""
    return cfg.model.tokenizer or cfg.model.hf_path or None


def tokenizer_vocab_size(tokenizer: Any) -> int | None:
    if tokenizer is None:
        return None
    for name in ("vocab_size", "get_piece_size"):
        if hasattr(tokenizer, name):
            return int(_attr(tokenizer, name))
    return None


def resolve_llama_config(cfg: RunConfig, tokenizer: Any = None) -> LlamaConfig:
    """The architecture: from hf_path's config.json, or the preset (vocab from the tokenizer)."""
    if cfg.model.hf_path:
        path = pathlib.Path(cfg.model.hf_path)
        if gguf.is_gguf(path):
            config = gguf.read_config(path)
        elif not (path / "config.json").is_file():
            raise ConfigError(f"model.hf_path: {path} has no config.json (expected an HF LLaMA checkpoint folder "
                              "or a GGUF file)")
        else:
            config = LlamaConfig.from_hf(path)
    else:
        try:
            config = LlamaConfig.preset(cfg.model.preset)
        except ValueError as err:
            raise ConfigError(f"model.preset: {err}") from None
        vocab = cfg.model.vocab_size or tokenizer_vocab_size(tokenizer)
        if vocab and vocab != config.vocab_size:
            config = dataclasses.replace(config, vocab_size=vocab)
    tok_vocab = tokenizer_vocab_size(tokenizer)
    if tok_vocab and tok_vocab > config.vocab_size:
        raise ConfigError(f"tokenizer has {tok_vocab} pieces but the model's vocab_size is {config.vocab_size}")
    return config


def llama_config_from_dict(d: dict[str, Any]) -> LlamaConfig:
    """The LlamaConfig of a checkpoint's model signature (`model_signature(...)["architecture"]`)."""
    d = dict(d)
    if d.get("rope_scaling"):
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    d["eos_token_id"] = tuple(d.get("eos_token_id") or ())
    return LlamaConfig(**d)


# LlamaConfig's family switches, left out of a signature at their LLaMA values: a LLaMA run's
# signature stays what it was before the switches existed, so its older checkpoints still resume.
_FAMILY_SWITCH_DEFAULTS = {"model_type": "llama", "attention_bias": False, "sliding_window": None}


def model_signature(cfg: RunConfig, llama_config: LlamaConfig) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes from it."""
    lora = to_dict(cfg.lora)
    architecture = {k: v for k, v in to_dict(llama_config).items()
                    if k not in _FAMILY_SWITCH_DEFAULTS or v != _FAMILY_SWITCH_DEFAULTS[k]}
    return {
        "architecture": architecture,
        "base": cfg.model.hf_path or f"preset:{cfg.model.preset}:seed{cfg.model.seed}",
        "param_dtype": cfg.model.param_dtype,
        "lora": {k: lora[k] for k in ("r", "alpha", "targets", "target_regex", "rslora")},
    }


def _model_kwargs(cfg: RunConfig) -> dict[str, Any]:
    return dict(remat=cfg.model.remat, attention_impl=cfg.model.attention_impl)


def _lora_rngs(cfg: RunConfig) -> nnx.Rngs:
    """The LoRA initialiser and dropout streams (A from model.seed + 1, dropout from train.seed + 2)."""
    return nnx.Rngs(params=cfg.model.seed + 1, dropout=cfg.train.seed + 2)


def init_model(cfg: RunConfig, llama_config: LlamaConfig, *, cpu_dot_forms: bool | None = None) -> Llama:
    """A preset with random weights from model.seed, plus LoRA; unsharded, nothing loaded from disk.

    A pure function of the config: `sharding.shard_model(lambda: init_model(...), mesh)` creates the
    weights straight into their shards (the same seed gives the same weights whatever the mesh:
    threefry is partitionable), `nnx.eval_shape(lambda: init_model(...))` gives shapes only.
    cpu_dot_forms: see `model.decoder.Llama` (the planner passes False)."""
    m = cfg.model
    model = Llama(llama_config, rngs=nnx.Rngs(params=m.seed), param_dtype=dtype_from_name(m.param_dtype),
                  dtype=dtype_from_name(m.dtype), cpu_dot_forms=cpu_dot_forms, **_model_kwargs(cfg))
    apply_lora(model, cfg.lora, _lora_rngs(cfg))
    return model


def build_model(cfg: RunConfig, llama_config: LlamaConfig, mesh: jax.sharding.Mesh) -> Llama:
    """Base model (HF / GGUF weights or seeded random preset) + LoRA, on `mesh`, in train mode."""
    m = cfg.model
    if m.hf_path:
        model, _ = load_pretrained(m.hf_path, dtype=m.param_dtype, compute_dtype=m.dtype, mesh=mesh,
                                   **_model_kwargs(cfg))
        apply_lora(model, cfg.lora, _lora_rngs(cfg))
        model = sharding.shard_model(model, mesh)
    else:
        model = sharding.shard_model(lambda: init_model(cfg, llama_config), mesh)
    model.train()
    return model
