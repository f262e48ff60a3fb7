"""The decoder's building blocks shared by every model family: `Linear` (optional bias),
`Embedding`, `RMSNorm` and the gated (SwiGLU) `MLP`.

Each projection's kernel is [in, out], the transpose of the HF weight, and its optional bias is
HF's bias as it is, so import and export are names plus transposes. Parameters carry logical axis
names (`logical_axes` metadata) that `bioinstruct_jax.parallel.sharding` maps to mesh axes.

`cpu_dot_forms` is an explicit constructor argument of every module that runs a dot: whether a bf16
dot takes its XLA:CPU form (f32 accumulation reading bf16 operands as they are). The model decides
it once (`default_cpu_dot_forms`: on the CPU backend) and passes it down; the memory planner builds
its model with False to trace the step of a TPU / GPU.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

AxisNames = tuple[str | None, ...]
# Maps an activation to a sharding constraint; identity when the model runs unsharded.
ActivationConstraint = Callable[[jax.Array, AxisNames], jax.Array]


def identity_constraint(x: jax.Array, axes: AxisNames) -> jax.Array:
    """The default activation constraint: none."""
    del axes
    return x


def default_cpu_dot_forms() -> bool:
    """Whether bf16 dots take their XLA:CPU form by default: on the CPU backend."""
    return jax.default_backend() == "cpu"


def normal_init(std: float) -> Callable[[jax.Array, tuple[int, ...], Any], jax.Array]:
    """A normal(0, std) initialiser drawn in float32 and cast to the parameter dtype."""
    return lambda key, shape, dtype: (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias). `kernel` is [in, out] (the transpose of HF's weight); `bias`
    [out] exists only with use_bias=True (Qwen2's q/k/v projections)."""

    def __init__(self, in_features: int, out_features: int, *, axes: AxisNames, rngs: nnx.Rngs,
                 param_dtype: Any = jnp.float32, dtype: Any = jnp.float32, init_std: float = 0.02,
                 use_bias: bool = False, cpu_dot_forms: bool | None = None):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.cpu_dot_forms = default_cpu_dot_forms() if cpu_dot_forms is None else cpu_dot_forms
        self.kernel = nnx.Param(
            normal_init(init_std)(rngs.params(), (in_features, out_features), param_dtype), logical_axes=axes
        )
        self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype), logical_axes=(axes[1],))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.project(x)
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)

    def project(self, x: jax.Array) -> jax.Array:
        """x @ kernel in the compute dtype, without the bias."""
        x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
        if self.dtype != jnp.float32 and self.cpu_dot_forms:
            # XLA:CPU's dot reads bf16 operands only when it accumulates into f32; a bf16-result
            # dot is upcast whole, and in a decode loop the f32 copies of the weights are hoisted
            # out of the loop, so every step reads f32 weights. Same values (f32 accumulation,
            # rounded to bf16) as the bf16 dot on accelerators.
            return jnp.dot(x, kernel, preferred_element_type=jnp.float32).astype(self.dtype)
        return jnp.dot(x, kernel)


class Embedding(nnx.Module):
    """Token embedding table [vocab, hidden]; `attend` reuses it as a tied output layer."""

    def __init__(self, vocab_size: int, features: int, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any):
        self.dtype = dtype
        self.embedding = nnx.Param(
            normal_init(0.02)(rngs.params(), (vocab_size, features), param_dtype), logical_axes=("vocab", "embed")
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(jnp.float32), self.embedding[...].astype(jnp.float32).T)


class RMSNorm(nnx.Module):
    """HF LlamaRMSNorm: normalise in float32, cast back, then scale."""

    def __init__(self, features: int, *, eps: float, param_dtype: Any, dtype: Any):
        self.eps = eps
        self.dtype = dtype
        self.weight = nnx.Param(jnp.ones((features,), param_dtype), logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * x32.astype(self.dtype)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, rngs: nnx.Rngs, param_dtype: Any,
                 dtype: Any, cpu_dot_forms: bool | None = None):
        d, f = hidden_size, intermediate_size
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype, cpu_dot_forms=cpu_dot_forms)
        self.gate_proj = Linear(d, f, axes=("embed", "mlp"), **kw)
        self.up_proj = Linear(d, f, axes=("embed", "mlp"), **kw)
        self.down_proj = Linear(f, d, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, constrain: ActivationConstraint) -> jax.Array:
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(constrain(h, ("batch", "length", "act_mlp")))


__all__ = ("AxisNames", "ActivationConstraint", "identity_constraint", "default_cpu_dot_forms", "normal_init",
           "Linear", "Embedding", "RMSNorm", "MLP")
