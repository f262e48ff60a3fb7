"""The LLaMA 1/2/3 family in Flax NNX, laid out like Hugging Face's `LlamaForCausalLM`.

Every projection is a separate `Linear` (q/k/v/o, gate/up/down) whose kernel is the transpose of
the HF weight, and the rotary embedding uses HF's half-split layout, so import and export are
names plus transposes. Parameters carry logical axis names (`logical_axes` metadata) that
`bioinstruct_jax.parallel.sharding` maps to mesh axes; activations are constrained the same way when the
model is given axis rules.

Precision: parameters are stored in `param_dtype` (bf16 for big models); matmuls run in `dtype`;
RMSNorm statistics, attention softmax and the logits are always computed in float32.

Attention masking is driven by `segment_ids` ([B, T] int, 0 = padding): a token attends
causally to earlier tokens of the same segment. That one mechanism covers right padding, left
padding and packed sequences. Generation uses `KVCache` (see `init_cache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

AxisNames = tuple[str | None, ...]
# Maps an activation to a sharding constraint; identity when the model runs unsharded.
ActivationConstraint = Callable[[jax.Array, AxisNames], jax.Array]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """HF `rope_scaling` / `rope_parameters`: `default`, `linear` or `llama3`."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture hyper-parameters, named as in HF's `config.json`."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    # llama.cpp's `rope_freqs.weight` (LLaMA-3.1 / 3.2 GGUF files): per-pair divisors of the base
    # rotary frequencies; when set they replace the `llama3` rule (see rope_inverse_frequencies).
    rope_freq_factors: tuple[float, ...] | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: tuple[int, ...] = (2,)
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; set head_dim"
            )
        if self.resolved_head_dim % 2:
            raise ValueError(f"head_dim={self.resolved_head_dim} must be even for rotary embeddings")
        if self.rope_scaling is not None and self.rope_scaling.rope_type not in _ROPE_TYPES:
            raise ValueError(
                f"rope_scaling.rope_type={self.rope_scaling.rope_type!r} is not supported "
                f"(supported: {', '.join(sorted(_ROPE_TYPES))})"
            )

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @classmethod
    def preset(cls, name: str) -> "LlamaConfig":
        """A named architecture (see `PRESETS`)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None

    @classmethod
    def from_hf(cls, source: str | pathlib.Path | dict[str, Any]) -> "LlamaConfig":
        """From an HF `config.json` (a dict, the file, or the directory holding it)."""
        origin = "config dict"
        if not isinstance(source, dict):
            path = pathlib.Path(source)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"no config.json at {path}")
            origin = str(path)
            try:
                source = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{origin}: not valid JSON ({err})") from None
        hf = dict(source)
        model_type = hf.get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(f"{origin}: model_type={model_type!r}, expected 'llama'")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise ValueError(f"{origin}: {flag}=true is not supported by this LLaMA implementation")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{origin}: hidden_act={hf['hidden_act']!r}, expected 'silu'")
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        scaling = None
        if rope_type != "default":
            known = {f.name for f in dataclasses.fields(RopeScaling)}
            scaling = RopeScaling(rope_type=rope_type, **{k: v for k, v in rope.items() if k in known})
        eos = hf.get("eos_token_id", 2)
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        try:
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=int(hf["hidden_size"]),
                intermediate_size=int(hf["intermediate_size"]),
                num_hidden_layers=int(hf["num_hidden_layers"]),
                num_attention_heads=int(hf["num_attention_heads"]),
                num_key_value_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
                head_dim=hf.get("head_dim"),
                max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
                rope_theta=rope_theta,
                rope_scaling=scaling,
                rope_freq_factors=tuple(map(float, hf["rope_freq_factors"])) if hf.get("rope_freq_factors") else None,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                bos_token_id=int(hf.get("bos_token_id") if hf.get("bos_token_id") is not None else 1),
                eos_token_id=eos_ids,
                pad_token_id=hf.get("pad_token_id"),
            )
        except KeyError as err:
            raise ValueError(f"{origin}: missing required key {err.args[0]!r}") from None

    def to_hf(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """An HF `config.json` dict that `transformers.LlamaConfig` reads back to this config."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = {**dataclasses.asdict(self.rope_scaling), "rope_theta": self.rope_theta}
            if self.rope_scaling.rope_type == "linear":
                rope = {"rope_type": "linear", "factor": self.rope_scaling.factor, "rope_theta": self.rope_theta}
        eos: int | list[int] = self.eos_token_id[0] if len(self.eos_token_id) == 1 else list(self.eos_token_id)
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.resolved_head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }

    def num_params(self) -> int:
        """Total parameter count (embeddings counted once when tied)."""
        d, f, v, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.resolved_head_dim
        attn = d * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else d * v
        return self.num_hidden_layers * layer + v * d + d + head


_ROPE_TYPES = frozenset({"default", "linear", "llama3"})

_LLAMA3_SCALING = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)

PRESETS: dict[str, LlamaConfig] = {
    "llama1-7b": LlamaConfig(max_position_embeddings=2048, rms_norm_eps=1e-6),
    "llama1-13b": LlamaConfig(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, max_position_embeddings=2048, rms_norm_eps=1e-6,
    ),
    "llama2-7b": LlamaConfig(),
    "llama2-13b": LlamaConfig(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40,
    ),
    "llama3.1-8b": LlamaConfig(
        vocab_size=128256, intermediate_size=14336, num_key_value_heads=8,
        max_position_embeddings=131072, rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING,
        bos_token_id=128000, eos_token_id=(128001, 128008, 128009),
    ),
    # Small shapes for tests, the CPU default and benchmarks.
    "tiny": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    ),
    "small": LlamaConfig(
        vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
    ),
    "bench-150m": LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
    ),
}


def identity_constraint(x: jax.Array, axes: AxisNames) -> jax.Array:
    """The default activation constraint: none."""
    del axes
    return x


def _normal(std: float) -> Callable[[jax.Array, tuple[int, ...], Any], jax.Array]:
    return lambda key, shape, dtype: (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


_CPU_DOT_FORMS = [True]


def cpu_dot_forms() -> bool:
    """Whether bf16 dots take their XLA:CPU form (f32 accumulation that reads bf16 operands as
    they are; see `Linear.__call__`): on the CPU backend, unless `accelerator_dot_forms` is on."""
    return _CPU_DOT_FORMS[0] and jax.default_backend() == "cpu"


@contextlib.contextmanager
def accelerator_dot_forms():
    """Trace bf16 dots as on an accelerator even on the CPU: the memory planner compiles on
    XLA:CPU to estimate a TPU / GPU step, which has no use for the CPU-only forms."""
    previous, _CPU_DOT_FORMS[0] = _CPU_DOT_FORMS[0], False
    try:
        yield
    finally:
        _CPU_DOT_FORMS[0] = previous


class Linear(nnx.Module):
    """y = x @ kernel, no bias. `kernel` is [in, out] (the transpose of HF's weight)."""

    def __init__(self, in_features: int, out_features: int, *, axes: AxisNames, rngs: nnx.Rngs,
                 param_dtype: Any = jnp.float32, dtype: Any = jnp.float32, init_std: float = 0.02):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.kernel = nnx.Param(
            _normal(init_std)(rngs.params(), (in_features, out_features), param_dtype), logical_axes=axes
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
        if self.dtype != jnp.float32 and cpu_dot_forms():
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
            _normal(0.02)(rngs.params(), (vocab_size, features), param_dtype), logical_axes=("vocab", "embed")
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


def rope_inverse_frequencies(config: LlamaConfig) -> jax.Array:
    """Per-pair rotary frequencies, with the `linear` or `llama3` rule (or GGUF frequency factors) applied."""
    dim = config.resolved_head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    scaling = config.rope_scaling
    if config.rope_freq_factors is not None:  # as llama.cpp: base / factors, then a linear scale
        inv_freq = inv_freq / jnp.asarray(config.rope_freq_factors, jnp.float32)
        return inv_freq / scaling.factor if scaling is not None and scaling.rope_type == "linear" else inv_freq
    if scaling is None or scaling.rope_type == "default":
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the middle band blended.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, blended, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate x [B, T, heads, head_dim] by positions [B, T] (HF half-split layout)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values per layer for cached decoding, stored in the layouts the attention dots
    read without a transpose: keys [B, kv_heads, head_dim, S], values [B, kv_heads, S, head_dim].

    `valid[b, s]` says slot s holds a real (non-padding) token; `index` is the next slot to write.
    (With a [B, S, heads, head_dim] cache, XLA:CPU copied the whole cache of every layer into these
    layouts on every decode step: two full-cache copies per layer per token.)
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    valid: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]


# Logical axes of the cached keys / values (for sharding constraints).
CACHE_KEY_AXES: AxisNames = ("batch", "act_kv_heads", None, "length")
CACHE_VALUE_AXES: AxisNames = ("batch", "act_kv_heads", "length", None)


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype: Any = jnp.bfloat16) -> KVCache:
    """An empty cache for `batch_size` rows of at most `max_length` tokens."""
    kv, hd, n = config.num_key_value_heads, config.resolved_head_dim, config.num_hidden_layers
    return KVCache(
        keys=tuple(jnp.zeros((batch_size, kv, hd, max_length), dtype) for _ in range(n)),
        values=tuple(jnp.zeros((batch_size, kv, max_length, hd), dtype) for _ in range(n)),
        valid=jnp.zeros((batch_size, max_length), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )


class Attention(nnx.Module):
    """Multi-head / grouped-query self-attention with rotary embeddings."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any,
                 attention_impl: str | None = None):
        d, hd = config.hidden_size, config.resolved_head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = hd
        self.attention_impl = attention_impl
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.q_proj = Linear(d, self.num_heads * hd, axes=("embed", "heads"), **kw)
        self.k_proj = Linear(d, self.num_kv_heads * hd, axes=("embed", "kv_heads"), **kw)
        self.v_proj = Linear(d, self.num_kv_heads * hd, axes=("embed", "kv_heads"), **kw)
        self.o_proj = Linear(self.num_heads * hd, d, axes=("heads", "embed"), **kw)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array, inv_freq: jax.Array,
                 constrain: ActivationConstraint, cache_kv: tuple[jax.Array, jax.Array] | None = None,
                 cache_index: jax.Array | None = None):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = constrain(apply_rope(q, positions, inv_freq), ("batch", "length", "act_heads", None))
        k = constrain(apply_rope(k, positions, inv_freq), ("batch", "length", "act_kv_heads", None))
        v = constrain(v, ("batch", "length", "act_kv_heads", None))
        new_kv = None
        if cache_kv is not None:
            ck, cv = cache_kv  # [B, K, H, S], [B, K, S, H]
            ck = jax.lax.dynamic_update_slice_in_dim(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype), cache_index, axis=3)
            cv = jax.lax.dynamic_update_slice_in_dim(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype), cache_index, axis=2)
            new_kv = (ck, cv)
            if mask.shape[-1] == t != ck.shape[-1]:
                cache_kv = None  # a prefill into an empty cache: attend over the new tokens only
        if cache_kv is not None and self.attention_impl in (None, "xla"):
            # A cache wider than the compute dtype (f32 cache, bf16 weights on XLA:CPU) is read as
            # it is stored; converting it would rewrite the whole cache on every step.
            cdt = jnp.promote_types(q.dtype, ck.dtype)
            out = _cached_attention(q.astype(cdt), ck.astype(cdt), cv.astype(cdt), mask).astype(q.dtype)
        elif cache_kv is not None:
            k, v = ck.transpose(0, 3, 1, 2).astype(q.dtype), cv.transpose(0, 2, 1, 3).astype(q.dtype)
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
        elif self.attention_impl in (None, "xla"):
            out = _einsum_attention(q, k, v, mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
        out = constrain(out, ("batch", "length", "act_heads", None))
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), new_kv


def _einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention, q [B,T,N,H], k/v [B,S,K,H], mask [B,1,T,S] -> [B,T,N,H].

    What `jax.nn.dot_product_attention(implementation="xla")` computes (f32 logits and softmax,
    GQA by grouping heads), but with heads moved next to the batch before the einsums, so that
    every dot has leading batch dimensions. On XLA:CPU that avoids the transposes and the slow
    fused softmax-backward dots of the generic path: 121 -> 73 ms fwd+bwd per layer at
    B=2, T=512, 12x64 heads (scripts/benchmark.py, BENCHMARKS.md).
    """
    b, t, n, h = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)  # [B,K,G,T,H]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B,K,S,H]
    scores = jnp.einsum("bkgth,bksh->bkgts", qg, kt, preferred_element_type=jnp.float32) * (h ** -0.5)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probs, vt)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _cached_attention(q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
    """`_einsum_attention` over a `KVCache` layer: q [B,T,N,H], keys [B,K,H,S], values [B,K,S,H],
    mask [B,1,T,S] -> [B,T,N,H]. Both dots read the cache in its stored layout."""
    b, t, n, h = q.shape
    kv = keys.shape[1]
    qg = q.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)  # [B,K,G,T,H]
    scores = jnp.einsum("bkgth,bkhs->bkgts", qg, keys, preferred_element_type=jnp.float32) * (h ** -0.5)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probs, values)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any):
        d, f = config.hidden_size, config.intermediate_size
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.gate_proj = Linear(d, f, axes=("embed", "mlp"), **kw)
        self.up_proj = Linear(d, f, axes=("embed", "mlp"), **kw)
        self.down_proj = Linear(f, d, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, constrain: ActivationConstraint) -> jax.Array:
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(constrain(h, ("batch", "length", "act_mlp")))


class DecoderLayer(nnx.Module):
    """Pre-norm attention and MLP blocks with residuals."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs, param_dtype: Any, dtype: Any,
                 attention_impl: str | None = None):
        norm_kw = dict(eps=config.rms_norm_eps, param_dtype=param_dtype, dtype=dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, **norm_kw)
        self.self_attn = Attention(config, rngs=rngs, param_dtype=param_dtype, dtype=dtype,
                                   attention_impl=attention_impl)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm_kw)
        self.mlp = MLP(config, rngs=rngs, param_dtype=param_dtype, dtype=dtype)

    def __call__(self, x, positions, mask, inv_freq, constrain, cache_kv=None, cache_index=None):
        h, new_kv = self.self_attn(self.input_layernorm(x), positions, mask, inv_freq, constrain,
                                   cache_kv, cache_index)
        x = constrain(x + h, ("batch", "length", "act_embed"))
        x = constrain(x + self.mlp(self.post_attention_layernorm(x), constrain), ("batch", "length", "act_embed"))
        return x, new_kv


class Llama(nnx.Module):
    """`LlamaForCausalLM`: embeddings, decoder layers, final norm and LM head."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs, param_dtype: Any = jnp.float32,
                 dtype: Any = jnp.float32, remat: bool = False, attention_impl: str | None = None):
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.constrain: ActivationConstraint = identity_constraint
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, rngs=rngs,
                                      param_dtype=param_dtype, dtype=dtype)
        self.layers = nnx.List([
            DecoderLayer(config, rngs=rngs, param_dtype=param_dtype, dtype=dtype, attention_impl=attention_impl)
            for _ in range(config.num_hidden_layers)
        ])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=param_dtype, dtype=dtype)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, axes=("embed", "vocab"),
                                  rngs=rngs, param_dtype=param_dtype, dtype=jnp.float32)

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, cache: KVCache | None = None,
                      prefill: bool = False):
        """Final-norm hidden states [B, T, D] (and the updated cache when one is given).

        prefill=True promises an empty cache (index 0, nothing valid): the T tokens are written to
        it but attend only to each other (T x T), not to the S - T empty slots.
        """
        b, t = input_ids.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        constrain = self.constrain
        inv_freq = rope_inverse_frequencies(self.config)
        if cache is None:
            mask = _segment_causal_mask(segment_ids)
            cache_index, valid = None, None
        else:
            cache_index = cache.index
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, segment_ids > 0, cache_index, axis=1)
            mask = _segment_causal_mask(segment_ids) if prefill else _cache_mask(valid, cache_index, t)
        x = constrain(self.embed_tokens(input_ids), ("batch", "length", "act_embed"))
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            cache_kv = None if cache is None else (cache.keys[i], cache.values[i])
            if self.remat and cache is None:
                x, _ = nnx.remat(lambda lyr, h: lyr(h, positions, mask, inv_freq, constrain))(layer, x)
                kv = None
            else:
                x, kv = layer(x, positions, mask, inv_freq, constrain, cache_kv, cache_index)
            if kv is not None:
                new_keys.append(kv[0])
                new_values.append(kv[1])
        x = self.norm(x)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(keys=tuple(new_keys), values=tuple(new_values), valid=valid,
                                index=cache.index + t)
        return x, new_cache

    def head_weight(self) -> tuple[jax.Array, int] | None:
        """(weight, index of its hidden axis) of a plain LM head: the tied embedding [V, D] (axis 1)
        or `lm_head`'s kernel [D, V] (axis 0); None for a LoRA-wrapped head, which keeps its own path."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.embedding[...], 1
        if type(self.lm_head) is Linear:
            return self.lm_head.kernel[...], 0
        return None

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits from final hidden states.

        On XLA:CPU with bf16 head weights, the dot reads them as they are (hidden states rounded to
        bf16, f32 accumulation, as transformers' bf16 model computes its head): an f32 head dot
        would make XLA keep an f32 copy of the head and read it on every decode step.
        """
        w, w_in_axis = self.head_weight() or (None, 0)
        if w is not None and w.dtype != jnp.float32 and cpu_dot_forms():
            dims = (((hidden.ndim - 1,), (w_in_axis,)), ((), ()))
            return jax.lax.dot_general(hidden.astype(w.dtype), w, dims, preferred_element_type=jnp.float32)
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden)
        return self.lm_head(hidden.astype(jnp.float32))

    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, cache: KVCache | None = None):
        """Logits [B, T, V] in float32; with a cache, returns (logits, new_cache)."""
        hidden, new_cache = self.hidden_states(input_ids, positions, segment_ids, cache)
        logits = self.constrain(self.logits(hidden), ("batch", "length", "act_vocab"))
        return logits if cache is None else (logits, new_cache)


def _segment_causal_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, 1, T, T] bool: same non-zero segment and key position <= query position.

    Padding queries (segment 0) get a self-attention entry so their softmax stays finite; their
    outputs are never used.
    """
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids > 0)[:, None, :]
    mask = causal[None] & same & real
    mask = mask | jnp.eye(t, dtype=jnp.bool_)[None]
    return mask[:, None]


def _cache_mask(valid: jax.Array, index: jax.Array, t: int) -> jax.Array:
    """[B, 1, T, S] bool for T new tokens written at slots index..index+T-1 of the cache."""
    s = valid.shape[1]
    query_slot = index + jnp.arange(t)[:, None]
    key_slot = jnp.arange(s)[None, :]
    mask = (key_slot <= query_slot)[None] & valid[:, None, :]
    mask = mask | (key_slot == query_slot)[None]
    return mask[:, None]


def count_params(model: nnx.Module, variable_type: type = nnx.Param) -> int:
    """Number of scalars in variables of `variable_type`."""
    state = nnx.state(model, variable_type)
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(state))


def padded_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions 0, 1, ... counted over real tokens only (for left-padded rows)."""
    real = (segment_ids > 0).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)


def dtype_from_name(name: str | Any) -> Any:
    """'bfloat16' / 'float32' / 'float16' -> a jnp dtype (dtypes pass through)."""
    if not isinstance(name, str):
        return name
    table = {"bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "float32": jnp.float32, "f32": jnp.float32,
             "float16": jnp.float16, "fp16": jnp.float16}
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(table)}") from None


__all__: Sequence[str] = (
    "LlamaConfig", "RopeScaling", "PRESETS", "Llama", "KVCache", "init_cache", "CACHE_KEY_AXES",
    "CACHE_VALUE_AXES", "Linear", "Embedding",
    "RMSNorm", "count_params", "padded_positions", "dtype_from_name", "rope_inverse_frequencies",
)
