"""The chunked LM head + cross-entropy (`model.lm_loss`) against the unchunked reference: the same
loss and the same LoRA gradients in f32, for tied and untied heads, chunks that do not divide the
sequence (padding), masked positions, and the train step's own loss function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.model.lm_loss import token_cross_entropy
from bioinstruct_jax.model.lora import LoRAParam, LoraConfig, apply_lora
from bioinstruct_jax.train import step as ts

B, T = 2, 37  # T prime: every chunk size but 1 and T pads the last chunk


def _model(tied: bool, lora_regex: str = r"layers/\d+/(self_attn|mlp)/\w+_proj") -> Llama:
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0, target_regex=lora_regex), nnx.Rngs(1))
    # B = 0 would make every LoRA-A gradient zero: give the adapters weight so all gradients are live
    for path, var in nnx.iter_graph(model):
        if isinstance(var, LoRAParam):
            var.set_value(var[...] + 0.05 * jax.random.normal(jax.random.key(len(path)), var.shape))
    return model


def _batch(vocab: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    mask = (rng.random((B, T)) < 0.6).astype(np.float32)
    seg = np.ones((B, T), np.int32)
    seg[1, 30:] = 0  # right padding in row 1: no targets there
    mask[1, 30:] = 0
    return {"input_ids": jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32),
            "targets": jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32),
            "loss_mask": jnp.asarray(mask), "segment_ids": jnp.asarray(seg),
            "positions": jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))}


def _loss_and_grads(model, batch, chunk_tokens):
    def objective(m):
        hidden, _ = m.hidden_states(batch["input_ids"], batch["positions"], batch["segment_ids"])
        total, count = token_cross_entropy(m, hidden, batch["targets"], batch["loss_mask"],
                                           chunk_tokens=chunk_tokens)
        return total / count

    loss, grads = jax.jit(nnx.value_and_grad(objective, argnums=nnx.DiffState(0, LoRAParam)))(model)
    return loss, jax.tree.leaves(grads)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk_tokens", [2, 16, 20, 1024])  # c = 1, 8, 10 (pads 37 -> 40), whole row
def test_chunked_equals_unchunked_loss_and_gradients(tied, chunk_tokens):
    model = _model(tied)
    batch = _batch(model.config.vocab_size)
    ref_loss, ref_grads = _loss_and_grads(model, batch, chunk_tokens=0)
    # the reference is optax over the model's own logits (what the step computed before chunking)
    logits = model(batch["input_ids"], batch["positions"], batch["segment_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    assert float(ref_loss) == pytest.approx(float(jnp.sum(ce * batch["loss_mask"]) / jnp.sum(batch["loss_mask"])),
                                            rel=1e-6)
    loss, grads = _loss_and_grads(model, batch, chunk_tokens=chunk_tokens)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    assert len(grads) == len(ref_grads) == 2 * 7 * 2
    for g, r in zip(grads, ref_grads):
        assert float(jnp.max(jnp.abs(r))) > 0  # every adapter gets a gradient
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-4, atol=1e-6)


def test_masked_positions_do_not_count():
    """A target under mask 0 may be anything: loss and gradients are unchanged."""
    model = _model(tied=True)
    batch = _batch(model.config.vocab_size)
    other = dict(batch, targets=jnp.where(batch["loss_mask"] > 0, batch["targets"], 7))
    (l1, g1), (l2, g2) = _loss_and_grads(model, batch, 16), _loss_and_grads(model, other, 16)
    assert float(l1) == float(l2)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lora_head_takes_the_unchunked_path_with_its_gradients():
    model = _model(tied=False, lora_regex=r"lm_head|layers/\d+/self_attn/q_proj")
    assert model.head_weight() is None
    batch = _batch(model.config.vocab_size)
    loss, grads = _loss_and_grads(model, batch, chunk_tokens=16)
    ref_loss, ref_grads = _loss_and_grads(model, batch, chunk_tokens=0)
    assert float(loss) == float(ref_loss) and len(grads) == 2 * 3
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in grads)  # the head's adapters are trained


def test_train_step_loss_is_the_chunked_one():
    """`train.step.loss_fn` (what the jitted step and the eval step use) equals the unchunked sum."""
    model = _model(tied=True)
    batch = _batch(model.config.vocab_size)
    total, count = jax.jit(ts.loss_fn)(model, batch)
    logits = model(batch["input_ids"], batch["positions"], batch["segment_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    assert float(count) == float(jnp.sum(batch["loss_mask"]))
    assert float(total) == pytest.approx(float(jnp.sum(ce * batch["loss_mask"])), rel=1e-6)
