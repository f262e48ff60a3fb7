"""Device mesh, logical-axis rules and shardings for the model, its activations and batches.

One mesh with three axes, `("data", "fsdp", "tensor")`:
  data    pure data parallelism (parameters replicated across it);
  fsdp    data parallelism with parameters (and their optimizer state) sharded over it (ZeRO-3);
  tensor  Megatron-style tensor parallelism over heads, MLP width and vocabulary.

Every parameter of the model carries `logical_axes` metadata (e.g. q_proj kernel
("embed", "heads")); `DEFAULT_RULES` maps each logical name to mesh axes, and that one table
decides the sharding of parameters (`param_sharding_fn`, `model_shardings`), activations
(`activation_constraint`, set as `model.constrain`) and input batches (`batch_sharding`).

A dimension that its mesh axes cannot divide is an error naming the parameter or activation,
the logical axis and both sizes: large weights are never silently replicated.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from bioinstruct_jax.config.sections import MeshConfig, ShardingError

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

# The one logical-axis table. Parameters: embed is sharded over fsdp (ZeRO-3 style: each weight
# is gathered just before its matmul), the "wide" dimensions over tensor. Activations: the batch
# is split over data x fsdp; hidden states (act_embed) stay unsharded along features so that the
# residual stream needs no collective between layers, while the per-head / MLP-width / vocabulary
# activations follow their tensor-sharded weights (Megatron layout: one all-reduce after o_proj
# and one after down_proj). Names missing from the table are an error, not "replicate".
DEFAULT_RULES: dict[str, MeshAxes] = {
    # parameters
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "norm": None,
    "lora_rank": None,
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def make_mesh(cfg: MeshConfig | Sequence[int] = MeshConfig(), devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    """A `("data", "fsdp", "tensor")` mesh over `devices` (default: all devices of all hosts).

    Axis types are `Auto` on purpose. With `Explicit` axes (the default of `jax.make_mesh` since
    JAX 0.9) sharding becomes part of every array's type, and each op whose output sharding is
    ambiguous (reshapes of sharded dims, `take` from a vocab-sharded table, attention) needs an
    `out_sharding` in the model code. The model is written sharding-agnostic instead: parameters,
    batches and step outputs get explicit `in_shardings`/`out_shardings` under `jax.jit`, and
    activations are pinned with `with_sharding_constraint` at the named points of `model.constrain`;
    between those points the GSPMD partitioner propagates. That is the MaxText recipe and keeps
    the same model code valid on one device.
    """
    if not isinstance(cfg, MeshConfig):
        cfg = MeshConfig(*cfg)
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolve(len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def _mesh_axes_tuple(value: MeshAxes) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def logical_to_spec(axes: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """Logical axis names -> PartitionSpec, e.g. ("embed", "heads") -> P("fsdp", "tensor")."""
    spec: list[MeshAxes] = []
    used: dict[str, str] = {}
    for name in axes:
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ShardingError(
                f"logical axis {name!r} has no rule; add it to the rules table (known: {', '.join(rules)})"
            )
        mesh_axes = _mesh_axes_tuple(rules[name])
        for ax in mesh_axes:
            if ax in used:
                raise ShardingError(
                    f"logical axes {used[ax]!r} and {name!r} of {tuple(axes)} both map to mesh axis {ax!r}"
                )
            used[ax] = name
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def check_divisible(shape: Sequence[int], axes: Sequence[str | None], spec: PartitionSpec,
                    mesh: jax.sharding.Mesh, what: str) -> None:
    """Raise a `ShardingError` naming `what` when a sharded dimension is not divisible."""
    if len(axes) != len(shape):
        raise ShardingError(f"{what}: {len(axes)} logical axes {tuple(axes)} for a rank-{len(shape)} shape {tuple(shape)}")
    for dim, name, mesh_axes in zip(shape, axes, tuple(spec) + (None,) * (len(shape) - len(spec))):
        parts = _mesh_axes_tuple(mesh_axes)
        size = math.prod(mesh.shape[a] for a in parts)
        if size > 1 and dim % size:
            axis_desc = (f"mesh axis {parts[0]!r} (size {size})" if len(parts) == 1 else
                         f"mesh axes {parts} (sizes {tuple(mesh.shape[a] for a in parts)}, product {size})")
            raise ShardingError(f"{name} dimension of {what} (size {dim}) is not divisible by {axis_desc}")


def path_str(path: Sequence[Any]) -> str:
    """'layers/0/self_attn/k_proj/kernel' from a state path (keys or jax key entries)."""
    parts = []
    for p in path:
        for attr in ("key", "idx", "name"):
            if hasattr(p, attr):
                p = getattr(p, attr)
                break
        parts.append(str(p))
    return "/".join(parts)


def _variable_sharding(path: Sequence[Any], var: Any, mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
    where = path_str(path)
    axes = var.get_metadata().get("logical_axes") if isinstance(var, nnx.Variable) else None
    value = var.get_value() if isinstance(var, nnx.Variable) else var
    shape = tuple(value.shape if hasattr(value, "shape") else np.shape(value))
    if axes is None:
        if isinstance(var, nnx.Param) or math.prod(shape) > 1:
            raise ShardingError(
                f"{where} (shape {shape}) has no logical_axes metadata, so it has no sharding rule; "
                f"give the variable logical_axes=(...) instead of replicating it"
            )
        return NamedSharding(mesh, PartitionSpec())  # RNG keys/counters and other scalars
    spec = logical_to_spec(axes, rules)
    check_divisible(shape, axes, spec, mesh, where)
    return NamedSharding(mesh, spec)


def param_sharding_fn(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> Callable[[tuple, nnx.Variable], NamedSharding]:
    """`(path, variable) -> NamedSharding` by the variable's `logical_axes` (used by `load_pretrained`)."""
    return lambda path, var: _variable_sharding(path, var, mesh, rules)


def state_shardings(state: Any, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """The same tree as `state` (an nnx.State) with a NamedSharding in place of each value."""
    def one(path, var):
        sharding = _variable_sharding(path, var, mesh, rules)
        return var.replace(sharding) if isinstance(var, nnx.Variable) else sharding

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def model_shardings(model: nnx.Module, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """NamedShardings for `nnx.state(model)` (same structure), by the logical-axis rules."""
    return state_shardings(nnx.state(model), mesh, rules)


def activation_constraint(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> Callable[[jax.Array, tuple], jax.Array]:
    """The callable to set as `model.constrain`: pins activations to their rule's sharding."""
    def constrain(x: jax.Array, axes: tuple) -> jax.Array:
        spec = logical_to_spec(axes, rules)
        check_divisible(x.shape, axes, spec, mesh, f"activation {tuple(axes)}")
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return constrain


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, length, ...] input array (token ids, segment ids, loss masks)."""
    axes = (("batch", "length") + (None,) * (ndim - 2)) if ndim >= 2 else ("batch",)
    return NamedSharding(mesh, logical_to_spec(axes, rules))


def check_batch(shape: Sequence[int], mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES, what: str = "batch") -> None:
    """Error when a [batch, length] input cannot be split over the batch mesh axes."""
    axes = ("batch", "length")[: len(shape)]
    check_divisible(tuple(shape)[: len(axes)], axes, logical_to_spec(axes, rules), mesh, what)


def shard_model(model: nnx.Module | Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """A model on `mesh`, with `model.constrain` set to the activation rules.

    Given a factory (a no-argument callable returning a module), the model is created straight
    into its shards: the factory is traced abstractly (`nnx.eval_shape`), the shardings are read
    from the abstract model, and the factory runs under `jax.jit` with those `out_shardings`, so
    no device ever holds a full copy. Given a module, its state is moved with `jax.device_put`
    (fine for small models and tests; big ones should come from a factory or `load_pretrained`).
    """
    if isinstance(model, nnx.Module):
        shardings = model_shardings(model, mesh, rules)
        nnx.update(model, jax.device_put(nnx.state(model), shardings))
    else:
        factory = model
        abstract = nnx.eval_shape(factory)
        graphdef, _ = nnx.split(abstract)
        shardings = model_shardings(abstract, mesh, rules)
        state = jax.jit(lambda: nnx.state(factory()), out_shardings=shardings)()
        model = nnx.merge(graphdef, state)
    set_constraint(model, activation_constraint(mesh, rules))
    return model


def set_constraint(model: nnx.Module, constrain: Callable[[jax.Array, tuple], jax.Array]) -> None:
    """Set the activation constraint on the model (the Llama reads `model.constrain`)."""
    model.constrain = constrain


def abstract_sharded_state(state: Any, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """`state` with each value replaced by a sharded `jax.ShapeDtypeStruct` (for `.lower()`)."""
    shardings = state_shardings(state, mesh, rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded arrays / ShapeDtypeStructs (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        try:
            itemsize = np.dtype(leaf.dtype).itemsize
        except TypeError:  # PRNG key arrays
            itemsize = 8
        total += math.prod(shape) * itemsize
    return total


__all__ = [
    "MESH_AXES", "DEFAULT_RULES", "MeshConfig", "ShardingError", "make_mesh", "logical_to_spec",
    "check_divisible", "param_sharding_fn", "state_shardings", "model_shardings", "shard_model",
    "activation_constraint", "set_constraint", "batch_sharding", "check_batch",
    "abstract_sharded_state", "per_device_bytes", "path_str",
]
