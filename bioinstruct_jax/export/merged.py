"""Export to Hugging Face: a merged `LlamaForCausalLM` directory and/or a PEFT LoRA adapter; and back.

`python -m bioinstruct_jax.export --checkpoint RUN_DIR [--step N] --out DIR --format merged|peft|both`
  (or `--base HF_DIR [--adapter PEFT_DIR]` instead of `--checkpoint`: an HF base plus an adapter
  made elsewhere, e.g. to merge it).

- `export_merged`: LoRA folded into the base weights (base + scale * A @ B, in float32, then cast),
  written as `config.json`, `generation_config.json`, safetensors shards of at most
  `max_shard_bytes` (`model.safetensors`, or `model-0000i-of-0000n.safetensors` +
  `model.safetensors.index.json` when there is more than one) and the tokenizer files. Each tensor
  is computed by a small jitted function, gathered to the host on its own and streamed to disk by
  `write_streamed`, which writes the array's own buffer, so the extra host memory is about one
  tensor, never the model.
- `export_peft`: `adapter_config.json` + `adapter_model.safetensors` with PEFT's names and layout
  (`base_model.model.<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r]); PEFT's scaling
  (lora_alpha / r, or / sqrt(r) with use_rslora) is ours, so the weights are written unscaled.
- `load_peft_adapter`: the reverse; checks every tensor against the model's modules and shapes,
  applies LoRA with the adapter's settings and fills A and B.

Outputs are written to a temporary sibling directory and renamed into place when complete; an
existing non-empty output directory is refused unless `overwrite=True`, and even then when it holds
anything an export does not write (`--overwrite` replaces a previous export, never a user's folder).
An output that is, contains or lies inside the run / base / adapter being read is always refused.
`--format both` writes OUT/merged and OUT/peft; other entries of OUT are left alone (and named).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import shutil
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.config.sections import ALL_TARGETS
from bioinstruct_jax.checkpoint.hf import CheckpointError, hf_name, is_transposed, named_params
from bioinstruct_jax.checkpoint.paths import inside
from bioinstruct_jax.checkpoint.safetensors_io import SafetensorsError, SafetensorsFile, write_streamed
from bioinstruct_jax.parallel.distributed import refuse_multi_process
from bioinstruct_jax.model.llama import Linear, Llama, dtype_from_name
from bioinstruct_jax.model.lora import LoraConfig, apply_lora, lora_modules

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Files of an HF tokenizer directory copied verbatim into a merged export.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")
_DTYPE_NAMES = {np.dtype(jnp.float32): "float32", np.dtype(jnp.bfloat16): "bfloat16",
                np.dtype(jnp.float16): "float16"}


class ExportError(ValueError):
    """An export or import that cannot be done as asked (names the file, tensor or setting)."""


# ----------------------------------------------------------------------------------------------
# Names


def module_hf_name(path: tuple[Any, ...]) -> str:
    """Our Linear module path -> HF module name, e.g. ('layers', 0, 'self_attn', 'q_proj') ->
    'model.layers.0.self_attn.q_proj' (from the shared parameter name table)."""
    return hf_name(tuple(path) + ("kernel",)).removesuffix(".weight")


def _linear_modules(model: nnx.Module) -> dict[tuple[Any, ...], Linear]:
    """Every Linear (plain or LoRA) of the model by path."""
    return {tuple(p): n for p, n in nnx.iter_graph(model) if isinstance(n, Linear)}


def _hf_order(name: str) -> tuple[int, int, str]:
    m = re.match(r"model\.layers\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return ({"model.embed_tokens.weight": 0, "model.norm.weight": 2}.get(name, 3), 0, name)


# ----------------------------------------------------------------------------------------------
# Output directories


def _export_file(name: str) -> bool:
    """A file name an export writes (what --overwrite may replace)."""
    return (name in TOKENIZER_FILES or name in ("config.json", "generation_config.json", ADAPTER_CONFIG,
                                                "model.safetensors.index.json", "adapter_model.bin")
            or name.endswith(".safetensors") or name.endswith(".gguf"))


def _check_out_dir(out_dir: pathlib.Path, overwrite: bool) -> None:
    """Refuse an output that exists and is not an empty folder; with overwrite, one that holds
    anything an export does not write (replacing it could delete the user's files)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"output path {out_dir} exists and is not a directory")
        entries = sorted(out_dir.iterdir())
        if entries and not overwrite:
            raise ExportError(f"output directory {out_dir} already exists and is not empty; "
                              f"choose another --out or pass --overwrite (overwrite=True) to replace it")
        foreign = [e.name for e in entries if not (e.is_file() and _export_file(e.name))]
        if entries and foreign:
            raise ExportError(f"output directory {out_dir} holds {foreign[0]!r}"
                              f"{f' and {len(foreign) - 1} more entries' if len(foreign) > 1 else ''}, "
                              f"which an export does not write; --overwrite replaces only a previous export, "
                              f"so choose another --out (or remove the folder yourself)")
    else:
        _check_writable_parent(out_dir)


def _check_writable_parent(out_dir: pathlib.Path) -> None:
    """The nearest existing ancestor of a new output folder must be a writable directory."""
    parent = out_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"--out {out_dir}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"--out {out_dir}: {parent} is not writable (read-only file system or no permission)")


def check_not_overlapping(out_dir: str | pathlib.Path, sources: dict[str, Any]) -> None:
    """Refuse an output folder that is, contains, or lies inside a folder the export reads.

    sources: what -> path (e.g. {"training run": RUN}). Paths are compared after resolving
    symlinks, so a link to the run is caught too."""
    out = pathlib.Path(out_dir).resolve()
    for what, src in sources.items():
        if not src:
            continue
        source = pathlib.Path(src).resolve()
        relation = ("is" if out == source else "lies inside" if out.is_relative_to(source)
                    else "contains" if source.is_relative_to(out) else None)
        if relation:
            raise ExportError(f"--out {out_dir} {relation} the {what} {src} that is being exported; "
                              f"an export never writes over its input: choose an --out outside it")


def _run_root(checkpoint_dir: str) -> pathlib.Path:
    """A training run's output_dir, from the run folder or its checkpoints/ folder."""
    from bioinstruct_jax.checkpoint.orbax import CHECKPOINT_SUBDIR

    path = pathlib.Path(checkpoint_dir)
    return path.parent if path.name == CHECKPOINT_SUBDIR else path


class _StagedDir:
    """Write into `.NAME.tmp-PID` beside `out_dir`; rename into place on success, delete on failure."""

    def __init__(self, out_dir: pathlib.Path, overwrite: bool):
        _check_out_dir(out_dir, overwrite)
        self.out_dir = out_dir
        self.tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"

    def __enter__(self) -> pathlib.Path:
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        os.replace(self.tmp, self.out_dir)


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Merged export


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


@jax.jit(static_argnames=("transpose", "dtype"))
def _plain_tensor(x, *, transpose: bool, dtype):
    # An explicit copy, so the output is always a fresh array (jit forwards unchanged inputs):
    # its host copy is cached on it and freed with it, never on the model's parameter.
    return jnp.array(x.T if transpose else x, dtype=dtype, copy=True)


def _host(x: jax.Array) -> np.ndarray:
    """Gather one (possibly sharded) array to host memory."""
    if not x.is_fully_addressable:
        raise ExportError("exporting arrays that span several processes is not supported; "
                          "restore the checkpoint in a single process (restore_for_export does)")
    return np.asarray(x)


def _merged_specs(model: Llama, dtype: Any) -> list[tuple[str, tuple[int, ...], np.dtype, Any]]:
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
                arr = _merged_tensor(var.get_value(), module.lora_a.get_value(), module.lora_b.get_value(),
                                     jnp.float32(module.scale), transpose=transpose, dtype=out_dtype)
            else:
                arr = _plain_tensor(var.get_value(), transpose=transpose, dtype=out_dtype)
            try:
                return _host(arr)
            finally:
                del arr

        out.append((name, shape, out_dtype, fetch))
    out.sort(key=lambda s: _hf_order(s[0]))
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
            from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer

            load_tokenizer(src).save(out_dir)
    return sorted(set(os.listdir(out_dir)) - before)


def export_merged(model: Llama, out_dir: str | pathlib.Path, *, tokenizer_dir: Any = None, dtype: Any = None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False) -> pathlib.Path:
    """Write `model` with every LoRA adapter folded in as an HF LLaMA directory; returns it.

    dtype: of the written weights (default: each parameter's own dtype); the merge itself is done
    in float32. tokenizer_dir: a tokenizer folder or file, or an object with `save(dir)`; None
    writes no tokenizer files. The model is left unchanged.
    """
    out_dir = pathlib.Path(out_dir)
    specs = _merged_specs(model, None if dtype is None else dtype_from_name(dtype))
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
    with _StagedDir(out_dir, overwrite) as tmp:
        _write_json(tmp / "config.json", config.to_hf(_DTYPE_NAMES[out_dtype]))
        gen = {"_from_model_config": True, "bos_token_id": config.bos_token_id,
               "eos_token_id": config.to_hf()["eos_token_id"]}
        if config.pad_token_id is not None:
            gen["pad_token_id"] = config.pad_token_id
        _write_json(tmp / "generation_config.json", gen)
        if tokenizer_dir is not None:
            _save_tokenizer(tokenizer_dir, tmp)
        files = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        weight_map = {}
        for filename, names in zip(files, shards):
            write_streamed(tmp / filename, [by_name[n][:3] for n in names], lambda n: by_name[n][3](),
                           metadata={"format": "pt"})
            weight_map.update({n: filename for n in names})
        if len(shards) > 1:
            _write_json(tmp / "model.safetensors.index.json",
                        {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map})
    return out_dir


# ----------------------------------------------------------------------------------------------
# PEFT adapters


def _peft_target_modules(model: nnx.Module, adapted: Sequence[tuple[Any, ...]]) -> list[str] | str:
    """PEFT's `target_modules`: module names when every module of those names is adapted (PEFT
    matches them as name suffixes), otherwise a regex of the exact module names (full match)."""
    names = sorted({p[-1] for p in adapted})
    every = {p for p in _linear_modules(model) if p[-1] in names}
    if every == set(adapted):
        return names
    return "|".join(re.escape(module_hf_name(p)) for p in sorted(adapted, key=lambda p: module_hf_name(p)))


def _lora_config_of(model: nnx.Module, adapted: Sequence[tuple[Any, ...]], r: int, alpha: float,
                    dropout: float, rslora: bool) -> LoraConfig:
    """Our LoraConfig adapting exactly the modules `adapted`."""
    names = sorted({str(p[-1]) for p in adapted})
    every = {p for p in _linear_modules(model) if p[-1] in names}
    if every == set(adapted) and set(names) <= set(ALL_TARGETS):
        return LoraConfig(r=r, alpha=alpha, dropout=dropout, targets=tuple(names), rslora=rslora)
    regex = "|".join(re.escape("/".join(map(str, p))) for p in sorted(adapted, key=lambda p: tuple(map(str, p))))
    return LoraConfig(r=r, alpha=alpha, dropout=dropout, targets=(), target_regex=regex, rslora=rslora)


def export_peft(model: nnx.Module, lora_config: LoraConfig, out_dir: str | pathlib.Path, *,
                base_model_name_or_path: str = "", overwrite: bool = False) -> pathlib.Path:
    """Write the model's LoRA adapters as a PEFT adapter directory; returns it."""
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
    for path, module in sorted(modules, key=lambda m: _hf_order(module_hf_name(m[0]) + ".")):
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
    with _StagedDir(out_dir, overwrite) as tmp:
        _write_json(tmp / ADAPTER_CONFIG, config)
        write_streamed(tmp / ADAPTER_WEIGHTS, specs,
                       lambda n: _host(_plain_tensor(fetch[n].get_value(), transpose=True, dtype=jnp.float32)),
                       metadata={"format": "pt"})
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
        import torch

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
    cfg = read_peft_config(adapter_dir)
    if lora_modules(model):
        raise ExportError("the model already has LoRA adapters; load a PEFT adapter into a base model")
    weights_file, tensors = _read_adapter_tensors(adapter_dir)
    r = int(cfg["r"])
    by_hf = {module_hf_name(p): (p, m) for p, m in _linear_modules(model).items()}
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
        from bioinstruct_jax.model.llama import LlamaConfig

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


# ----------------------------------------------------------------------------------------------
# Training checkpoints and the CLI


def _checkpoint_lora_check(checkpoint_dir: str, step: int | None) -> None:
    """A clear error for a directory with no training checkpoint, or one without LoRA state."""
    from bioinstruct_jax.checkpoint.orbax import checkpoint_dir as ckpt_dir

    d = pathlib.Path(str(ckpt_dir(checkpoint_dir)))
    steps = sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []
    if not steps:
        hint = " (it looks like an HF model: use --base)" if (pathlib.Path(checkpoint_dir) / "config.json").is_file() else ""
        raise ExportError(f"{checkpoint_dir}: no training checkpoint found in {d}{hint}")
    chosen = steps[-1] if step is None else step
    if chosen not in steps:
        raise ExportError(f"{d}: no checkpoint for step {chosen} (have {steps})")
    items = sorted(p.name for p in (d / str(chosen)).iterdir())
    if "lora" not in items:
        raise ExportError(f"{d / str(chosen)}: holds no LoRA state (items: {items}); nothing to export as an adapter")


def restore_checkpoint(checkpoint_dir: str, step: int | None = None):
    """(model with LoRA, RunConfig, tokenizer path or None) of a training checkpoint."""
    _checkpoint_lora_check(checkpoint_dir, step)
    from bioinstruct_jax.checkpoint.orbax import restore_for_export

    return restore_for_export(checkpoint_dir, step)


def _base_name(run_config: Any) -> str:
    m = run_config.model
    return m.hf_path or f"preset:{m.preset}:seed{m.seed}"


def export_model(model: Llama, lora_config: LoraConfig | None, out_dir: str | pathlib.Path, *,
                 fmt: str = "merged", tokenizer: Any = None, dtype: Any = None,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, base_model_name_or_path: str = "",
                 overwrite: bool = False) -> pathlib.Path:
    """`export_merged` and/or `export_peft` by `fmt` (both: OUT/merged and OUT/peft); returns out_dir.

    Every output directory is checked before anything is written."""
    out = pathlib.Path(out_dir)
    targets = _format_dirs(out, fmt)
    for path in targets.values():
        _check_out_dir(path, overwrite)
    if "peft" in targets and (lora_config is None or not lora_modules(model)):
        raise ExportError("--format peft needs LoRA state, and this model has no LoRA adapters "
                          "(a base model alone has none: pass --adapter, or a training checkpoint)")
    if "merged" in targets:
        export_merged(model, targets["merged"], tokenizer_dir=tokenizer, dtype=dtype,
                      max_shard_bytes=max_shard_bytes, overwrite=overwrite)
    if "peft" in targets:
        export_peft(model, lora_config, targets["peft"], base_model_name_or_path=base_model_name_or_path,
                    overwrite=overwrite)
    return out


def export_checkpoint(checkpoint_dir: str, out_dir: str, *, step: int | None = None, fmt: str = "merged",
                      tokenizer: Any = None, dtype: Any = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      overwrite: bool = False) -> pathlib.Path:
    """Export a training run's checkpoint (latest step by default); returns out_dir.

    tokenizer: default the run's (model.tokenizer or model.hf_path); dtype: default the run's
    model.param_dtype."""
    check_not_overlapping(out_dir, {"training run": _run_root(checkpoint_dir)})
    for path in _format_dirs(pathlib.Path(out_dir), fmt).values():
        _check_out_dir(path, overwrite)  # before the restore
    model, run_config, run_tokenizer = restore_checkpoint(checkpoint_dir, step)
    return export_model(model, run_config.lora, out_dir, fmt=fmt, tokenizer=tokenizer or run_tokenizer or None,
                        dtype=dtype or run_config.model.param_dtype, max_shard_bytes=max_shard_bytes,
                        base_model_name_or_path=_base_name(run_config), overwrite=overwrite)


def _format_dirs(out: pathlib.Path, fmt: str) -> dict[str, pathlib.Path]:
    if fmt == "both":
        return {"merged": out / "merged", "peft": out / "peft"}
    if fmt not in ("merged", "peft"):
        raise ExportError(f"--format {fmt!r}: choose merged, peft or both")
    return {fmt: out}


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '2GiB' / '1000' -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"cannot read size {text!r} (e.g. 5GB, 500MB, 2GiB)")
    unit = m.group(2).upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    return int(float(m.group(1)) * base**power)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bioinstruct_jax.export", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a training run's output_dir (or its checkpoints/ folder)")
    src.add_argument("--base", help="an HF LLaMA directory (with --adapter: merge a PEFT adapter into it)")
    p.add_argument("--adapter", help="a PEFT LoRA adapter directory (with --base)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="output directory (with --format both: OUT/merged and OUT/peft)")
    p.add_argument("--format", default="merged", choices=("merged", "peft", "both"))
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights dtype of the merged model (default: the model's parameter dtype)")
    p.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_MAX_SHARD_BYTES,
                   help="largest safetensors shard, e.g. 5GB (default), 2GiB, 500MB")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder/file to ship (default: the run's or the base's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    cli_errors.add_debug_argument(p)
    args = p.parse_args(argv)
    if args.adapter and not args.base:
        p.error("--adapter needs --base (the HF model the adapter was trained on)")
    if args.step is not None and not args.checkpoint:
        p.error("--step applies to --checkpoint only")
    return args


def export_base_adapter(base_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                        adapter_dir: str | pathlib.Path | None = None, fmt: str = "merged", tokenizer: Any = None,
                        dtype: Any = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                        overwrite: bool = False) -> pathlib.Path:
    """An HF base (+ a PEFT adapter) exported as a merged model and/or (re-written) adapter.

    The base is loaded in its stored dtype (config.json), which is also the default output dtype;
    the tokenizer defaults to the base directory's."""
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    base = pathlib.Path(base_dir)
    check_not_overlapping(out_dir, {"base model": base, "PEFT adapter": adapter_dir})
    for path in _format_dirs(pathlib.Path(out_dir), fmt).values():
        _check_out_dir(path, overwrite)  # before the (possibly long) load
    hf_cfg = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    stored = hf_cfg.get("dtype") or hf_cfg.get("torch_dtype") or "float32"
    model, _ = load_pretrained(base, dtype=stored)
    lora_config = load_peft_adapter(model, adapter_dir) if adapter_dir else None
    from bioinstruct_jax.checkpoint.gguf import find_gguf, is_gguf

    if tokenizer is None and is_gguf(base):
        tokenizer = find_gguf(base)  # the tokenizer (and chat template) in the GGUF metadata
    elif tokenizer is None and any((base / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        tokenizer = base
    return export_model(model, lora_config, out_dir, fmt=fmt, tokenizer=tokenizer, dtype=dtype or stored,
                        max_shard_bytes=max_shard_bytes, base_model_name_or_path=str(base.resolve()),
                        overwrite=overwrite)


def _both_note(out: pathlib.Path) -> str | None:
    """What `--format both` does in a folder that already holds other entries (they are kept)."""
    others = sorted(p.name for p in out.iterdir() if p.name not in ("merged", "peft")) if out.is_dir() else []
    if not others:
        return None
    return (f"note: {out} is not empty; --format both wrote only {out / 'merged'} and {out / 'peft'} "
            f"and left its {len(others)} other entries ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
            f"as they are")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    refuse_multi_process("bioinstruct_jax.export")  # one process; see distributed.py
    common = dict(fmt=args.format, tokenizer=args.tokenizer, dtype=args.dtype, max_shard_bytes=args.max_shard_size,
                  overwrite=args.overwrite)
    note = _both_note(pathlib.Path(args.out)) if args.format == "both" else None
    try:
        if args.checkpoint:
            out = export_checkpoint(args.checkpoint, args.out, step=args.step, **common)
        else:
            out = export_base_adapter(args.base, args.out, adapter_dir=args.adapter, **common)
    except (ValueError, OSError) as err:  # ExportError, CheckpointError, a damaged checkpoint, a full disk
        return cli_errors.report_or_raise(err)
    if note:
        print(note, file=sys.stderr)
    written = sorted(str(p.relative_to(out)) for d in _format_dirs(out, args.format).values()
                     for p in d.rglob("*") if p.is_file())
    print(json.dumps({"out": str(out), "format": args.format, "files": written}))
    return 0


__all__ = [
    "ExportError", "export_merged", "export_peft", "load_peft_adapter", "read_peft_config", "export_model",
    "export_checkpoint", "export_base_adapter", "restore_checkpoint", "plan_shards", "module_hf_name", "parse_size", "main",
]
