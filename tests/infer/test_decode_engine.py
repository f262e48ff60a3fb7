"""The decode engine's cache layout and prefill: same numbers as the straightforward way, and no
whole-cache copies in the compiled decode loop (read from the optimized HLO, not timed)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bioinstruct_jax.infer.engine import Generator, default_cache_dtype, length_bucket
from bioinstruct_jax.model.attention import init_cache
from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.decoder import Llama, padded_positions
from bioinstruct_jax.infer.sampling import SamplingConfig

CFG = LlamaConfig.preset("tiny")  # 4 heads, 2 kv heads (GQA), head_dim 16


def _left_padded(batch: int = 2, width: int = 12):
    ids = np.random.default_rng(0).integers(3, CFG.vocab_size, (batch, width)).astype(np.int32)
    seg = np.ones((batch, width), np.int32)
    seg[1, :5] = 0  # row 1 is left-padded
    ids[1, :5] = 0
    return jnp.asarray(ids), jnp.asarray(seg)


def test_cache_layout_is_what_the_attention_dots_read():
    cache = init_cache(CFG, 3, 40, jnp.float32)
    assert cache.keys[0].shape == (3, CFG.num_key_value_heads, CFG.resolved_head_dim, 40)
    assert cache.values[0].shape == (3, CFG.num_key_value_heads, 40, CFG.resolved_head_dim)


def test_prefill_over_new_tokens_equals_attention_over_the_whole_empty_cache():
    model = Llama(CFG, rngs=nnx.Rngs(0))
    ids, seg = _left_padded()
    pos = padded_positions(seg)
    full_h, full_c = model.hidden_states(ids, pos, seg, cache=init_cache(CFG, 2, 32, jnp.float32))
    pre_h, pre_c = model.hidden_states(ids, pos, seg, cache=init_cache(CFG, 2, 32, jnp.float32), prefill=True)
    real = np.asarray(seg) > 0  # padding positions' outputs are never used
    np.testing.assert_allclose(np.asarray(pre_h)[real], np.asarray(full_h)[real], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(pre_c.valid), np.asarray(full_c.valid))
    assert int(pre_c.index) == int(full_c.index) == ids.shape[1]
    slots = np.asarray(full_c.valid)  # [B, S]: padding slots hold values no query ever reads
    for a, b in zip(pre_c.keys, full_c.keys):  # [B, K, H, S]
        np.testing.assert_allclose(np.asarray(a) * slots[:, None, None], np.asarray(b) * slots[:, None, None],
                                   rtol=1e-5, atol=1e-5)
    for a, b in zip(pre_c.values, full_c.values):  # [B, K, S, H]
        np.testing.assert_allclose(np.asarray(a) * slots[:, None, :, None], np.asarray(b) * slots[:, None, :, None],
                                   rtol=1e-5, atol=1e-5)


def test_bf16_weights_keep_an_f32_cache_on_cpu_with_the_same_tokens():
    assert default_cache_dtype(jnp.bfloat16) == (jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    model = Llama(CFG, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    prompts = [[5, 9, 33, 71], [8, 2, 100]]
    wide = Generator(model, eos_ids=()).generate(prompts, max_new_tokens=6).tokens
    narrow = Generator(model, eos_ids=(), cache_dtype=jnp.bfloat16).generate(prompts, max_new_tokens=6).tokens
    # The cached keys / values are bf16-rounded either way; only the attention arithmetic's
    # precision differs, so greedy tokens of this tiny model agree.
    assert wide == narrow


def test_decode_loop_copies_no_cache_sized_array():
    model = Llama(CFG, rngs=nnx.Rngs(0))
    gen = Generator(model, eos_ids=(), min_new_bucket=16)
    b, prompt, new = 2, 48, 16
    ids, seg = jnp.ones((b, prompt), jnp.int32), jnp.ones((b, prompt), jnp.int32)
    t, k, p = SamplingConfig().traced_values()
    hlo = gen._generate_jit.lower(gen._state, ids, seg, jax.random.key(0), jnp.int32(new),
                                  jnp.asarray(gen.stop_table([])), t, k, p, new_bucket=new, greedy=True,
                                  filtered=False).compile().as_text()
    kv, hd, s = CFG.num_key_value_heads, CFG.resolved_head_dim, prompt + new
    cache_shapes = {f"[{b},{kv},{hd},{s}]", f"[{b},{kv},{s},{hd}]", f"[{b},{s},{kv},{hd}]"}
    assert _loop_cache_copies(hlo, cache_shapes) == []


def _loop_cache_copies(hlo: str, shapes: set[str]) -> list[str]:
    """Copy / transpose instructions of the decode loop (op_name .../while/body/...) whose result
    has one of the cache `shapes`."""
    out = []
    for line in hlo.splitlines():
        m = re.search(r"= f32(\[[\d,]+\])\S* (copy|transpose)\(", line)
        if m and "while/body" in line and m.group(1) in shapes:
            out.append(line.strip())
    return out


def test_length_bucket_is_the_smallest_power_of_two_or_one_and_a_half_times_one_that_holds_n():
    assert [length_bucket(n) for n in (1, 2, 3, 5, 7, 9, 13, 17, 25, 129, 193, 257, 520, 769)] == \
        [1, 2, 3, 6, 8, 12, 16, 24, 32, 192, 256, 384, 768, 1024]
    allowed = sorted({1 << k for k in range(14)} | {3 << k for k in range(13)})
    for n in range(1, 5000):
        assert length_bucket(n) == next(a for a in allowed if a >= n), n
