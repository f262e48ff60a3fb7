"""Hand-written LoRA for the NNX decoder: W x + b + (alpha / r) * B A x, only A and B trained.

`apply_lora(model, config, rngs)` swaps the targeted `Linear` modules for `LoRALinear`s in place.
A `LoRALinear` keeps the base kernel (and the bias, where the projection has one: frozen, never
adapted) at the same path, so HF import/export names are unchanged, and adds `lora_a` [in, r]
(PEFT's uniform init) and `lora_b` [r, out] (zeros, so a fresh adapter changes nothing), both of type `LoRAParam`: the optimizer, gradients and checkpoints select
adapters by that type and never touch the frozen base `nnx.Param`s.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bioinstruct_jax.config.sections import LoraConfig
from bioinstruct_jax.model.layers import Linear


class LoRAParam(nnx.Variable):
    """A trainable adapter weight (the only thing the optimizer updates)."""


class LoRALinear(Linear):
    """A `Linear` plus a low-rank update; shares the wrapped layer's kernel variable."""

    def __init__(self, base: Linear, config: LoraConfig, *, rngs: nnx.Rngs):
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.dtype = base.dtype
        self.cpu_dot_forms = base.cpu_dot_forms
        self.kernel = base.kernel
        self.bias = base.bias  # frozen, like the kernel; never adapted
        self.scale = config.scale
        self.rank = config.r
        self.merged = False
        in_axis, out_axis = base.kernel.get_metadata()["logical_axes"]
        bound = 1.0 / math.sqrt(self.in_features)  # PEFT: kaiming_uniform(a=sqrt(5)) on A
        self.lora_a = LoRAParam(
            jax.random.uniform(rngs.params(), (self.in_features, config.r), jnp.float32, -bound, bound),
            logical_axes=(in_axis, "lora_rank"),
        )
        self.lora_b = LoRAParam(jnp.zeros((config.r, self.out_features), jnp.float32),
                                logical_axes=("lora_rank", out_axis))
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs) if config.dropout > 0 else None

    def delta(self) -> jax.Array:
        """The dense update scale * A @ B, [in, out] in float32."""
        return self.scale * (self.lora_a[...] @ self.lora_b[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        if self.merged:
            return y
        h = x.astype(self.dtype)
        if self.dropout is not None:
            h = self.dropout(h)
        update = jnp.dot(jnp.dot(h, self.lora_a[...].astype(self.dtype)), self.lora_b[...].astype(self.dtype))
        return y + (self.scale * update).astype(y.dtype)

    def merge(self) -> None:
        """Fold the adapter into the base kernel; later calls skip the low-rank path."""
        if not self.merged:
            kernel = self.kernel[...]
            self.kernel.set_value((kernel.astype(jnp.float32) + self.delta()).astype(kernel.dtype))
            self.merged = True

    def unmerge(self) -> None:
        """Undo `merge` (exact in float32; rounds once more in bf16)."""
        if self.merged:
            kernel = self.kernel[...]
            self.kernel.set_value((kernel.astype(jnp.float32) - self.delta()).astype(kernel.dtype))
            self.merged = False


def lora_modules(model: nnx.Module) -> list[tuple[tuple[Any, ...], LoRALinear]]:
    """(module path, LoRALinear) for every adapter in the model."""
    return [(tuple(p), n) for p, n in nnx.iter_graph(model) if isinstance(n, LoRALinear)]


def apply_lora(model: nnx.Module, config: LoraConfig, rngs: nnx.Rngs) -> int:
    """Wrap each targeted Linear of `model` in a LoRALinear (in place); returns how many."""
    chosen = [(tuple(p), n) for p, n in nnx.iter_graph(model)
              if type(n) is Linear and config.matches(tuple(p))]
    if not chosen:
        what = f"regex {config.target_regex!r}" if config.target_regex else f"targets {list(config.targets)}"
        raise ValueError(f"LoRA {what} matched no Linear module of the model")
    for path, module in chosen:
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        wrapped = LoRALinear(module, config, rngs=rngs)
        if isinstance(path[-1], int):
            parent[path[-1]] = wrapped
        else:
            setattr(parent, path[-1], wrapped)
    return len(chosen)


def merge_lora(model: nnx.Module) -> None:
    """Fold every adapter into its base kernel."""
    for _, module in lora_modules(model):
        module.merge()


def unmerge_lora(model: nnx.Module) -> None:
    """Undo `merge_lora`."""
    for _, module in lora_modules(model):
        module.unmerge()


def parameter_summary(model: nnx.Module) -> tuple[int, int]:
    """(trainable LoRA scalars, all scalars) for the start-of-run printout."""
    def size(var_type):
        return sum(int(x.size) for x in jax.tree_util.tree_leaves(nnx.state(model, var_type)))

    trainable = size(LoRAParam)
    return trainable, trainable + size(nnx.Param)
