"""PEFT LoRA adapters: write a model's adapters as one, and read one onto a base model.

- `write_peft_adapter`: `adapter_config.json` + `adapter_model.safetensors` with PEFT's names and
  layout (`base_model.model.<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r]); PEFT's
  scaling (lora_alpha / r, or / sqrt(r) with use_rslora) is ours, so the weights are written
  unscaled. Written like every export (`checkpoint.output`: checked, staged, renamed into place).
- `read_peft_config`: adapter_config.json, checked for the LoRA features this model supports.
- `load_peft_adapter`: the reverse of the writer; checks every tensor against the model's modules
  and shapes, applies LoRA with the adapter's settings and fills A and B.
Inference (a `--lora` adapter) and the export command (`--adapter`) both read adapters here.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bioinstruct_jax.checkpoint.output import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ExportError, StagedDir, host_array,
                                               hf_order, linear_modules, module_hf_name, plain_tensor, write_json,
                                               write_text_files)
from bioinstruct_jax.checkpoint.paths import inside
from bioinstruct_jax.checkpoint.staging import refuse_unfinished
from bioinstruct_jax.checkpoint.safetensors_io import SafetensorsError, SafetensorsFile, write_streamed
from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.config.sections import ALL_TARGETS, LoraConfig
from bioinstruct_jax.model.lora import apply_lora, lora_modules

PEFT_PREFIX = "base_model.model."


def is_peft_adapter(path: str | pathlib.Path) -> bool:
    """Whether `path` is a PEFT adapter folder (it holds adapter_config.json)."""
    return (pathlib.Path(path) / ADAPTER_CONFIG).is_file()


def _peft_target_modules(model: nnx.Module, adapted: Sequence[tuple[Any, ...]]) -> list[str] | str:
    """PEFT's `target_modules`: module names when every module of those names is adapted (PEFT
    matches them as name suffixes), otherwise a regex of the exact module names (full match)."""
    names = sorted({p[-1] for p in adapted})
    every = {p for p in linear_modules(model) if p[-1] in names}
    if every == set(adapted):
        return names
    return "|".join(re.escape(module_hf_name(p)) for p in sorted(adapted, key=lambda p: module_hf_name(p)))


def _lora_config_of(model: nnx.Module, adapted: Sequence[tuple[Any, ...]], r: int, alpha: float,
                    dropout: float, rslora: bool) -> LoraConfig:
    """Our LoraConfig adapting exactly the modules `adapted`."""
    names = sorted({str(p[-1]) for p in adapted})
    every = {p for p in linear_modules(model) if p[-1] in names}
    if every == set(adapted) and set(names) <= set(ALL_TARGETS):
        return LoraConfig(r=r, alpha=alpha, dropout=dropout, targets=tuple(names), rslora=rslora)
    regex = "|".join(re.escape("/".join(map(str, p))) for p in sorted(adapted, key=lambda p: tuple(map(str, p))))
    return LoraConfig(r=r, alpha=alpha, dropout=dropout, targets=(), target_regex=regex, rslora=rslora)


def write_peft_adapter(model: nnx.Module, lora_config: LoraConfig, out_dir: str | pathlib.Path, *,
                base_model_name_or_path: str = "", overwrite: bool = False,
                extra_files: dict[str, str] | None = None) -> pathlib.Path:
    """Write the model's LoRA adapters as a PEFT adapter directory; returns it.

    extra_files: name -> text written beside the adapter (the model card)."""
    out_dir = pathlib.Path(out_dir)
    modules = lora_modules(model)
    if not modules:
        raise ExportError("the model has no LoRA adapters (no LoRA state to export as PEFT); "
                          "train with LoRA or use --format merged")
    for path, module in modules:
        if module.rank != lora_config.r or not math.isclose(module.scale, lora_config.scale):
            raise ExportError(f"LoRA module {'/'.join(map(str, path))} has r={module.rank}, scale={module.scale} but "
                              f"lora_config says r={lora_config.r}, scale={lora_config.scale}")
        if module.merged:
            raise ExportError(f"LoRA module {'/'.join(map(str, path))} is merged into its base kernel; "
                              f"unmerge_lora(model) before exporting the adapter")
    specs, fetch = [], {}
    for path, module in sorted(modules, key=lambda m: hf_order(module_hf_name(m[0]) + ".")):
        prefix = PEFT_PREFIX + module_hf_name(path)
        for letter, var in (("A", module.lora_a), ("B", module.lora_b)):
            name = f"{prefix}.lora_{letter}.weight"
            specs.append((name, tuple(reversed(var.shape)), np.dtype(np.float32)))
            fetch[name] = var
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or None,
        "r": lora_config.r,
        "lora_alpha": lora_config.alpha,
        "lora_dropout": lora_config.dropout,
        "use_rslora": lora_config.rslora,
        "target_modules": _peft_target_modules(model, [p for p, _ in modules]),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_dora": False,
    }
    with StagedDir(out_dir, overwrite) as tmp:
        write_json(tmp / ADAPTER_CONFIG, config)
        write_streamed(tmp / ADAPTER_WEIGHTS, specs,
                       lambda n: host_array(plain_tensor(fetch[n].get_value(), transpose=True, dtype=jnp.float32)),
                       metadata={"format": "pt"})
        write_text_files(tmp, extra_files)
    return out_dir


_PEFT_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[\w-]+))?\.weight")


def _read_adapter_tensors(adapter_dir: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    """name -> lazily readable tensor of adapter_model.safetensors (or .bin)."""
    st = adapter_dir / ADAPTER_WEIGHTS
    if st.is_file():
        inside(adapter_dir, ADAPTER_WEIGHTS, "the PEFT adapter")
        try:
            f = SafetensorsFile(st)
        except SafetensorsError as err:
            raise ExportError(str(err)) from None
        return st, {k: (lambda k=k: f.get(k), f.shape(k)) for k in f.keys()}
    binf = adapter_dir / "adapter_model.bin"
    if binf.is_file():
        inside(adapter_dir, binf.name, "the PEFT adapter")
        import torch  # optional (not a core dependency): only for the older .bin adapters

        tensors = torch.load(binf, map_location="cpu", weights_only=True)
        return binf, {k: (lambda t=t: t.float().numpy(), tuple(t.shape)) for k, t in tensors.items()}
    raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_WEIGHTS} or adapter_model.bin")


def read_peft_config(adapter_dir: str | pathlib.Path) -> dict[str, Any]:
    """adapter_config.json, checked for the LoRA features this model supports."""
    path = pathlib.Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a PEFT adapter directory)")
    inside(adapter_dir, ADAPTER_CONFIG, "the PEFT adapter")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from None
    if cfg.get("peft_type") != "LORA":
        raise ExportError(f"{path}: peft_type={cfg.get('peft_type')!r}, only 'LORA' adapters can be loaded")
    unsupported = [("use_dora", True), ("fan_in_fan_out", True)]
    for key, bad in unsupported:
        if cfg.get(key) == bad:
            raise ExportError(f"{path}: {key}={bad} is not supported")
    if cfg.get("bias", "none") != "none":
        raise ExportError(f"{path}: bias={cfg['bias']!r} is not supported (only 'none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ExportError(f"{path}: {key}={cfg[key]} (per-module ranks/alphas) is not supported")
    if cfg.get("modules_to_save"):
        raise ExportError(f"{path}: modules_to_save={cfg['modules_to_save']} (fully trained extra modules) "
                          f"is not supported")
    for key in ("r", "lora_alpha"):
        if key not in cfg:
            raise ExportError(f"{path}: missing required key {key!r}")
    return cfg


def load_peft_adapter(model: Llama, adapter_dir: str | pathlib.Path, rngs: nnx.Rngs | None = None, *,
                      dropout: float | None = None) -> LoraConfig:
    """Add the PEFT LoRA adapter in `adapter_dir` to `model` (a base model without adapters), in place.

    Every adapter tensor is checked against the model (module exists, [r, in] / [out, r] shapes)
    before anything changes. Returns the LoraConfig used (dropout from the adapter unless given).
    """
    adapter_dir = pathlib.Path(adapter_dir)
    refuse_unfinished(adapter_dir)
    cfg = read_peft_config(adapter_dir)
    if lora_modules(model):
        raise ExportError("the model already has LoRA adapters; load a PEFT adapter into a base model")
    weights_file, tensors = _read_adapter_tensors(adapter_dir)
    r = int(cfg["r"])
    by_hf = {module_hf_name(p): (p, m) for p, m in linear_modules(model).items()}
    found: dict[tuple[Any, ...], dict[str, tuple[str, Any]]] = {}
    for key, (get, shape) in tensors.items():
        m = _PEFT_KEY.fullmatch(key)
        if m is None:
            raise ExportError(f"{weights_file}: tensor {key!r} (shape {shape}) is not a LoRA A/B weight of a "
                              f"linear module; only lora_A / lora_B tensors are supported")
        module_name = m.group("module")
        if module_name not in by_hf:
            raise ExportError(
                f"{weights_file}: tensor {key!r} targets module {module_name!r}, which this model does not have "
                f"(it has {model.config.num_hidden_layers} layers, tie_word_embeddings="
                f"{model.config.tie_word_embeddings}); the adapter was made for a different base model")
        path, module = by_hf[module_name]
        want = (r, module.in_features) if m.group("ab") == "A" else (module.out_features, r)
        if tuple(shape) != want:
            raise ExportError(
                f"{weights_file}: tensor {key!r} has shape {tuple(shape)}, but this model's {module_name} "
                f"({module.in_features} -> {module.out_features}) with r={r} needs {want}; "
                f"the adapter was made for a different base model")
        found.setdefault(path, {})[m.group("ab")] = (key, get)
    if not found:
        raise ExportError(f"{weights_file}: no LoRA tensors in it")
    for path, ab in found.items():
        if set(ab) != {"A", "B"}:
            raise ExportError(f"{weights_file}: module {module_hf_name(path)} has lora_{''.join(ab)} "
                              f"but no lora_{'B' if 'A' in ab else 'A'}")
    base = cfg.get("base_model_name_or_path")
    if base and (pathlib.Path(base) / "config.json").is_file():
        theirs = LlamaConfig.from_hf(base)
        ours = model.config
        for field in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size",
                      "num_attention_heads", "num_key_value_heads"):
            if getattr(theirs, field) != getattr(ours, field):
                raise ExportError(f"{adapter_dir / ADAPTER_CONFIG}: base model {base} has {field}="
                                  f"{getattr(theirs, field)}, this model has {getattr(ours, field)}")
    lora_config = _lora_config_of(model, list(found), r, float(cfg["lora_alpha"]),
                                  float(cfg.get("lora_dropout", 0.0)) if dropout is None else dropout,
                                  bool(cfg.get("use_rslora", False)))
    apply_lora(model, lora_config, rngs if rngs is not None else nnx.Rngs(0))
    adapters = dict(lora_modules(model))
    for path, ab in found.items():
        module = adapters[path]
        for letter, var in (("A", module.lora_a), ("B", module.lora_b)):
            value = np.asarray(ab[letter][1](), dtype=np.float32).T
            old = var.get_value()
            var.set_value(jax.device_put(jnp.asarray(value), old.sharding))
    return lora_config
