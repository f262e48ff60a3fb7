"""Our NNX LLaMA against transformers' PyTorch LlamaForCausalLM on tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[test]')")

import jax.numpy as jnp  # noqa: E402

from bioinstruct_jax.checkpoint.hf import load_pretrained  # noqa: E402
from bioinstruct_jax.model.llama import padded_positions  # noqa: E402
from hf_fixtures import TINY_VARIANTS, write_tiny_llama  # noqa: E402


def _left_padded_batch(vocab: int, lengths=(11, 7, 3), seed: int = 1):
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = rng.integers(3, vocab, size=n)
        mask[row, width - n:] = 1
    return ids, mask


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out.logits.float().numpy()


def _jax_logits(model, ids, mask):
    seg = jnp.asarray(mask)
    return np.asarray(model(jnp.asarray(ids), positions=padded_positions(seg), segment_ids=seg))


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_f32_logits_match_transformers_on_left_padded_batch(tmp_path, variant):
    ref = write_tiny_llama(tmp_path, variant)
    model, config = load_pretrained(tmp_path, dtype=jnp.float32)
    assert config.tie_word_embeddings == TINY_VARIANTS[variant]["tie_word_embeddings"]
    ids, mask = _left_padded_batch(config.vocab_size)
    ours, theirs = _jax_logits(model, ids, mask), _torch_logits(ref, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
    assert np.abs(ours[real]).max() > 0.1  # the comparison is not between near-zero logits


def test_right_padding_and_segments_match_unpadded(tmp_path):
    write_tiny_llama(tmp_path, "gqa_tied")
    model, _ = load_pretrained(tmp_path, dtype=jnp.float32)
    ids, _ = _left_padded_batch(128, lengths=(9,))
    alone = np.asarray(model(jnp.asarray(ids)))
    padded = np.concatenate([ids, np.zeros((1, 4), np.int32)], axis=1)
    seg = np.concatenate([np.ones((1, 9), np.int32), np.zeros((1, 4), np.int32)], axis=1)
    right = np.asarray(model(jnp.asarray(padded), segment_ids=jnp.asarray(seg)))
    np.testing.assert_allclose(right[:, :9], alone, atol=1e-5)


def test_bf16_logits_close_to_transformers_f32(tmp_path):
    """bf16 weights and compute stay within 0.15 of the f32 reference (logit scale ~1-3)."""
    ref = write_tiny_llama(tmp_path, "gqa_llama3")
    model, _ = load_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert model.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.bfloat16
    ids, mask = _left_padded_batch(128)
    ours, theirs = _jax_logits(model, ids, mask), _torch_logits(ref, ids, mask)
    real = mask.astype(bool)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours[real], theirs[real], atol=0.15, rtol=0)


def test_greedy_argmax_matches_transformers(tmp_path):
    ref = write_tiny_llama(tmp_path, "mha_untied")
    model, _ = load_pretrained(tmp_path, dtype=jnp.float32)
    ids, mask = _left_padded_batch(128, lengths=(12, 12))
    assert (_jax_logits(model, ids, mask).argmax(-1) == _torch_logits(ref, ids, mask).argmax(-1)).all()
