"""The hand-written LoRA: exact no-op at init, merge, LoRA-only gradients, dropout, rsLoRA, targeting,
and the trainable-parameter count against peft itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.model.layers import Linear
from bioinstruct_jax.model.lora import (LoraConfig, LoRALinear, LoRAParam, apply_lora, lora_modules, merge_lora,
                                        parameter_summary, unmerge_lora)

CFG = LlamaConfig.preset("tiny")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def ids(n=2, t=12, seed=0):
    return jax.random.randint(jax.random.key(seed), (n, t), 0, CFG.vocab_size)


def lora_model(seed_b: int | None = 5, **lora_kw) -> Llama:
    model = Llama(CFG, rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(**{"dropout": 0.0, "targets": ALL, **lora_kw}), nnx.Rngs(1))
    if seed_b is not None:  # a trained-looking adapter: non-zero B
        for i, (_, module) in enumerate(lora_modules(model)):
            module.lora_b.set_value(0.05 * jax.random.normal(jax.random.key(seed_b + i), module.lora_b.shape))
    return model


def test_fresh_adapter_output_equals_base_output_exactly():
    base = Llama(CFG, rngs=nnx.Rngs(0))
    want = np.asarray(base(ids()))
    n = apply_lora(base, LoraConfig(r=8, dropout=0.1), nnx.Rngs(1))
    assert n == 4 * CFG.num_hidden_layers
    base.eval()
    np.testing.assert_array_equal(np.asarray(base(ids())), want)
    base.train()  # dropout on the adapter input cannot matter while B is zero
    np.testing.assert_array_equal(np.asarray(base(ids())), want)
    a = lora_modules(base)[0][1].lora_a[...]
    bound = 1 / np.sqrt(CFG.hidden_size)  # PEFT's kaiming_uniform(a=sqrt(5)) bound on A
    assert float(jnp.abs(a).max()) <= bound and float(jnp.abs(a).max()) > 0.8 * bound


def test_merged_output_equals_unmerged_and_unmerge_restores():
    model = lora_model()
    unmerged = np.asarray(model(ids()))
    kernel_before = np.asarray(model.layers[0].self_attn.q_proj.kernel[...])
    merge_lora(model)
    assert all(m.merged for _, m in lora_modules(model))
    merged = np.asarray(model(ids()))
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
    assert np.abs(merged - np.asarray(Llama(CFG, rngs=nnx.Rngs(0))(ids()))).max() > 1e-3  # the adapter matters
    unmerge_lora(model)
    np.testing.assert_allclose(np.asarray(model.layers[0].self_attn.q_proj.kernel[...]), kernel_before, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model(ids())), unmerged, atol=1e-5, rtol=0)


def test_gradients_reach_only_lora_weights():
    model = lora_model()
    x = ids()

    def loss(m):
        logits = m(x)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, x[..., None], -1)[..., 0])

    grad_fn = nnx.grad(loss, argnums=nnx.DiffState(0, LoRAParam))
    grads = grad_fn(model)
    flat = nnx.to_flat_state(grads)
    lora_paths = {p for p, _ in nnx.to_flat_state(nnx.state(model, LoRAParam))}
    assert {p for p, _ in flat} == lora_paths
    assert all(isinstance(v, LoRAParam) for _, v in flat)
    assert all(float(jnp.abs(v.get_value()).max()) > 0 for _, v in flat)  # both A and B receive gradient
    # base gradients are not computed at all: the differentiated jaxpr has no output shaped like a base kernel
    base_shapes = {tuple(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    lora_shapes = {tuple(v.shape) for _, v in flat}
    jaxpr = jax.make_jaxpr(lambda m: grad_fn(m))(model)
    out_shapes = {tuple(v.aval.shape) for v in jaxpr.jaxpr.outvars}
    assert out_shapes <= lora_shapes and not (out_shapes & (base_shapes - lora_shapes))


def test_dropout_only_in_training():
    model = lora_model(dropout=0.5)
    x = ids()
    model.train()
    a, b = np.asarray(model(x)), np.asarray(model(x))
    assert np.abs(a - b).max() > 1e-4
    model.eval()
    c, d = np.asarray(model(x)), np.asarray(model(x))
    np.testing.assert_array_equal(c, d)
    for _, module in lora_modules(model):  # eval mode is exactly "no dropout"
        module.dropout = None
    np.testing.assert_array_equal(c, np.asarray(model(x)))


@pytest.mark.parametrize("rslora,scale", [(False, 32 / 16), (True, 32 / 4)])
def test_scale_and_rslora(rslora, scale):
    config = LoraConfig(r=16, alpha=32, rslora=rslora, dropout=0.0)
    assert config.scale == pytest.approx(scale)
    base = Linear(24, 40, axes=("embed", "heads"), rngs=nnx.Rngs(0))
    layer = LoRALinear(base, config, rngs=nnx.Rngs(1))
    layer.lora_b.set_value(jax.random.normal(jax.random.key(2), (16, 40)))
    x = jax.random.normal(jax.random.key(3), (3, 24))
    want = x @ base.kernel[...] + scale * (x @ layer.lora_a[...] @ layer.lora_b[...])
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_target_names_and_regex_select_modules():
    model = Llama(CFG, rngs=nnx.Rngs(0))
    n = apply_lora(model, LoraConfig(target_regex=r"layers/1/self_attn/(q|v)_proj"), nnx.Rngs(1))
    assert n == 2
    assert sorted("/".join(map(str, p)) for p, _ in lora_modules(model)) == [
        "layers/1/self_attn/q_proj", "layers/1/self_attn/v_proj"]
    assert type(model.layers[0].self_attn.q_proj) is Linear
    model = Llama(CFG, rngs=nnx.Rngs(0))
    assert apply_lora(model, LoraConfig(targets=("gate_proj", "down_proj")), nnx.Rngs(1)) == 2 * CFG.num_hidden_layers
    assert {p[-1] for p, _ in lora_modules(model)} == {"gate_proj", "down_proj"}
    with pytest.raises(ValueError, match="matched no Linear"):
        apply_lora(Llama(CFG, rngs=nnx.Rngs(0)), LoraConfig(target_regex=r"nothing/here"), nnx.Rngs(1))
    with pytest.raises(ValueError, match="unknown module name"):
        LoraConfig(targets=("qproj",))
    # LoRA weights carry logical axes that follow the wrapped kernel (for sharding)
    q = lora_modules(apply_lora_model())[0][1]
    assert q.lora_a.get_metadata()["logical_axes"] == ("embed", "lora_rank")
    assert q.lora_b.get_metadata()["logical_axes"] == ("lora_rank", "heads")


def apply_lora_model():
    model = Llama(CFG, rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(targets=("q_proj",)), nnx.Rngs(1))
    return model


def test_llama7b_trainable_count_matches_peft():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = LlamaConfig.preset("llama2-7b")
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf()))
    wrapped = peft.get_peft_model(hf, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                      lora_dropout=0.05, task_type="CAUSAL_LM"))
    peft_trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    peft_total = sum(p.numel() for p in wrapped.parameters())
    assert peft_trainable == 4_194_304

    def create():
        model = Llama(config, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
        apply_lora(model, LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")), nnx.Rngs(1))
        return model

    trainable, total = parameter_summary(nnx.eval_shape(create))
    assert trainable == peft_trainable
    assert total == peft_total == config.num_params() + peft_trainable
