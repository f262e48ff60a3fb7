"""Hugging Face checkpoints of every model family (`model.families`) -> our NNX model, one tensor at a time.

`load_pretrained(path)` reads `config.json` and the weights (`model.safetensors`, sharded
safetensors with `model.safetensors.index.json`, or `pytorch_model.bin[.index.json]` through
`torch.load(weights_only=True)`), or a llama.cpp GGUF file (`checkpoint.gguf`), builds the model
abstractly (no weights allocated), and fills each
parameter from its memory-mapped tensor. With a `mesh`, every parameter is assembled from its
shards with `jax.make_array_from_callback`, so each device receives only its slice and the host
never holds a full copy of the model.

The name table (`hf_name` / `param_path`) is shared with export.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bioinstruct_jax.checkpoint import gguf
from bioinstruct_jax.checkpoint.errors import CheckpointError
from bioinstruct_jax.checkpoint.paths import inside
from bioinstruct_jax.checkpoint.staging import refuse_unfinished
from bioinstruct_jax.checkpoint.safetensors_io import SafetensorsError, SafetensorsFile
from bioinstruct_jax.model.config import LlamaConfig, dtype_from_name
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.parallel.sharding import param_sharding_fn

ParamPath = tuple[Any, ...]
ShardingFn = Callable[[ParamPath, nnx.Variable], jax.sharding.Sharding]

# HF buffers that old checkpoints store but that are recomputed, never loaded.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def hf_name(path: ParamPath) -> str:
    """Our parameter path -> HF tensor name, e.g. ('layers', 0, 'mlp', 'up_proj', 'kernel')."""
    match path:
        case ("embed_tokens", "embedding"):
            return "model.embed_tokens.weight"
        case ("norm", "weight"):
            return "model.norm.weight"
        case ("lm_head", "kernel"):
            return "lm_head.weight"
        case ("layers", int() as i, block, proj, "kernel"):
            return f"model.layers.{i}.{block}.{proj}.weight"
        case ("layers", int() as i, block, proj, "bias"):
            return f"model.layers.{i}.{block}.{proj}.bias"
        case ("layers", int() as i, norm, "weight"):
            return f"model.layers.{i}.{norm}.weight"
    raise KeyError(f"no Hugging Face name for parameter {'/'.join(map(str, path))}")


def is_transposed(path: ParamPath) -> bool:
    """Linear kernels are stored [in, out] here and [out, in] in HF."""
    return path[-1] == "kernel"


def named_params(model: nnx.Module) -> Iterator[tuple[ParamPath, nnx.Variable]]:
    """(path, variable) for every `nnx.Param` of the model (base weights only)."""
    for path, node in nnx.iter_graph(model):
        if type(node) is nnx.Param:
            yield tuple(path), node


class _TensorSource:
    """Name -> lazily read tensor over the files of one HF checkpoint directory."""

    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        self._files: dict[str, Any] = {}
        self.weight_map = self._discover()

    def _discover(self) -> dict[str, str]:
        d = self.directory
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = d / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as err:
                    raise CheckpointError(f"{index}: not a valid weight index ({err})") from None
                if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                    raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
                for f in sorted(set(weight_map.values())):  # before any of them is opened
                    inside(d, f, f"{index_name} weight_map")
                missing = sorted({f for f in weight_map.values() if not (d / f).is_file()})
                if missing:
                    raise CheckpointError(f"{index}: names shard file(s) that do not exist: {', '.join(missing)}")
                return dict(weight_map)
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (d / single).is_file():
                inside(d, single, "the weights file")
                return {name: single for name in self._open(single).keys()}
        raise FileNotFoundError(
            f"{d}: no weights found (expected model.safetensors, model.safetensors.index.json, "
            f"pytorch_model.bin or pytorch_model.bin.index.json)"
        )

    def _open(self, filename: str):
        if filename not in self._files:
            path = self.directory / filename
            if filename.endswith(".safetensors"):
                try:
                    self._files[filename] = SafetensorsFile(path)
                except SafetensorsError as err:
                    raise CheckpointError(str(err)) from None
            else:
                self._files[filename] = _TorchBinFile(path)
        return self._files[filename]

    def file_of(self, name: str) -> pathlib.Path:
        return self.directory / self.weight_map[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._open(self.weight_map[name]).shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._open(self.weight_map[name]).get(name)


class _TorchBinFile:
    """A `pytorch_model.bin` read with `torch.load(weights_only=True, mmap=True)`."""

    def __init__(self, path: pathlib.Path):
        try:
            import torch
        except ImportError:  # pragma: no cover - depends on the environment
            raise CheckpointError(f"{path}: reading .bin checkpoints needs torch (pip install torch)") from None
        try:
            self._tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # torch raises many types for a corrupt file
            raise CheckpointError(f"{path}: cannot be read by torch.load ({type(err).__name__}: {err})") from None
        self._torch = torch

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def get(self, name: str) -> np.ndarray:
        import ml_dtypes

        t = self._tensors[name]
        if t.dtype == self._torch.bfloat16:
            return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()


def _source_name(path: ParamPath, config: LlamaConfig, source: _TensorSource) -> str:
    name = hf_name(path)
    if name == "model.embed_tokens.weight" and config.tie_word_embeddings and name not in source.weight_map:
        return "lm_head.weight"  # a tied checkpoint that stored only the output layer
    return name


def abstract_model(config: LlamaConfig, **model_kwargs: Any) -> Llama:
    """The model with ShapeDtypeStruct leaves: structure and shapes, no memory."""
    return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0), **model_kwargs))


def fill_params(model: Llama, source: _TensorSource, sharding_fn: ShardingFn | None = None) -> None:
    """Replace every abstract parameter of `model` with the checkpoint's tensor, placed by `sharding_fn`."""
    config = model.config
    expected = {}
    for path, var in named_params(model):
        name = _source_name(path, config, source)
        expected[name] = (path, var)
    missing = [n for n in expected if n not in source.weight_map]
    if missing:
        path, var = expected[missing[0]]
        shape = tuple(reversed(var.shape)) if is_transposed(path) else tuple(var.shape)
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])}...)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{source.directory}: missing tensor {missing[0]!r} (model expects shape {shape}){more}"
        )
    allowed_extra = {"lm_head.weight", "model.embed_tokens.weight"} if config.tie_word_embeddings else set()
    unexpected = [n for n in source.weight_map if n not in expected and not _IGNORED.fullmatch(n)
                  and n not in allowed_extra]
    if unexpected:
        raise CheckpointError(
            f"{source.directory}: unexpected tensor {unexpected[0]!r} in {source.file_of(unexpected[0]).name} "
            f"(shape {source.shape(unexpected[0])}); {len(unexpected)} unexpected in all"
        )
    for name, (path, var) in expected.items():
        want = tuple(var.shape)
        got = source.shape(name)
        got_ours = tuple(reversed(got)) if is_transposed(path) else got
        if got_ours != want:
            hf_want = tuple(reversed(want)) if is_transposed(path) else want
            raise CheckpointError(
                f"{source.file_of(name)}: tensor {name!r} has shape {got}, the model expects {hf_want}"
            )
        target_dtype = var.get_value().dtype
        sharding = sharding_fn(path, var) if sharding_fn else jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def read(index, name=name, transpose=is_transposed(path), dtype=target_dtype):
            tensor = source.get(name)
            if transpose:
                tensor = tensor.T
            return np.asarray(tensor[index]).astype(dtype)

        var.set_value(jax.make_array_from_callback(want, sharding, read))


def read_config(path: str | pathlib.Path) -> LlamaConfig:
    """The `LlamaConfig` of an HF folder (`config.json`) or a GGUF file / folder (its metadata)."""
    if gguf.is_gguf(path):
        return gguf.read_config(path)
    return LlamaConfig.from_hf(path)


def _open_checkpoint(path: pathlib.Path) -> tuple[LlamaConfig, Any]:
    """(config, tensor source) of an HF folder or a GGUF file / folder."""
    refuse_unfinished(path)
    if gguf.is_gguf(path):
        source = gguf.GGUFTensorSource(path)
        return source.config, source
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (expected an HF checkpoint folder or a .gguf file)")
    return LlamaConfig.from_hf(inside(path, "config.json", "the checkpoint")), _TensorSource(path)


def load_pretrained(path: str | pathlib.Path, *, dtype: Any = jnp.bfloat16, compute_dtype: Any = None,
                    sharding_fn: ShardingFn | None = None, mesh: jax.sharding.Mesh | None = None,
                    **model_kwargs: Any) -> tuple[Llama, LlamaConfig]:
    """Load an HF checkpoint folder of any family, or a GGUF file / a folder holding one, as `(model, config)`.

    dtype: parameter dtype (bf16 by default); compute_dtype: matmul dtype (defaults to dtype).
    mesh: place each parameter straight into its shards by the logical-axis rules of
    `bioinstruct_jax.parallel.sharding` (or pass `sharding_fn` for full control).
    """
    directory = pathlib.Path(path)
    config, source = _open_checkpoint(directory)
    param_dtype = dtype_from_name(dtype)
    compute = dtype_from_name(compute_dtype) if compute_dtype is not None else param_dtype
    model = abstract_model(config, param_dtype=param_dtype, dtype=compute, **model_kwargs)
    if mesh is not None and sharding_fn is None:
        sharding_fn = param_sharding_fn(mesh)
    fill_params(model, source, sharding_fn)
    return model, config
