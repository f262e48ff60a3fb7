"""Qwen2 (q/k/v biases, tied embeddings) and Mistral (sliding window) against transformers on tiny
random checkpoints: f32 logits, greedy tokens through the decode engine, LoRA, sharding, param counts.

Mistral's window (4 tokens) is shorter than every sequence here, so the logits and the greedy
tokens only match when both the training mask and the decode engine's cache mask honour it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[test]')")

from bioinstruct_jax.checkpoint.hf import load_pretrained  # noqa: E402
from bioinstruct_jax.infer.engine import Generator  # noqa: E402
from bioinstruct_jax.model.config import LlamaConfig  # noqa: E402
from bioinstruct_jax.model.decoder import padded_positions  # noqa: E402
from bioinstruct_jax.model.lora import LoraConfig, LoRAParam, apply_lora  # noqa: E402
from bioinstruct_jax.parallel import sharding as parallel  # noqa: E402
from family_fixtures import FAMILIES, write_tiny_family  # noqa: E402

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def loaded(request, tmp_path_factory):
    """(family, HF torch model, our f32 model, its Generator) per family; std 0.1 weights so greedy
    continuations vary and a wrong mask changes tokens."""
    family = request.param
    directory = tmp_path_factory.mktemp(family)
    ref = write_tiny_family(directory, family, initializer_range=0.1)
    model, config = load_pretrained(directory, dtype=jnp.float32)
    assert config.model_type == family
    return family, ref, model, Generator(model, eos_ids=[])


def _left_padded(lengths=(11, 7, 3), seed: int = 1, vocab: int = 128):
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids, mask = np.zeros((len(lengths), width), np.int64), np.zeros((len(lengths), width), np.int64)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = rng.integers(3, vocab, size=n)
        mask[row, width - n:] = 1
    return ids, mask


def _ours(model, ids, mask):
    seg = jnp.asarray(mask, jnp.int32)
    return np.asarray(model(jnp.asarray(ids, jnp.int32), positions=padded_positions(seg), segment_ids=seg))


def test_f32_logits_match_transformers_on_left_padded_batch(loaded):
    family, ref, model, _ = loaded
    ids, mask = _left_padded()
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()
    ours, real = _ours(model, ids, mask), mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
    assert np.abs(ours[real]).max() > 0.1
    if family == "qwen2":
        assert model.config.attention_bias and model.config.tie_word_embeddings
        assert model.layers[0].self_attn.q_proj.bias is not None and model.layers[0].self_attn.o_proj.bias is None
    else:
        assert model.config.sliding_window == 4


def test_greedy_tokens_match_transformers_generate(loaded):
    _, ref, _, gen = loaded
    ids, mask = _left_padded((9, 6, 2), seed=3)
    prompts = [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]
    ref.generation_config.eos_token_id = None
    with torch.no_grad():
        out = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                           max_new_tokens=10, min_new_tokens=10, pad_token_id=0)
    theirs = out[:, ids.shape[1]:].tolist()
    ours = gen.generate(prompts, max_new_tokens=10).tokens
    assert ours == theirs
    assert len({t for row in ours for t in row}) > 5  # not one repeated token


def test_lora_with_zero_b_equals_base_and_leaves_biases_frozen(loaded):
    _, _, model, _ = loaded
    ids, mask = _left_padded()
    base = _ours(model, ids, mask)
    adapted = nnx.clone(model)
    assert apply_lora(adapted, LoraConfig(r=4, dropout=0.0, targets=ALL_PROJECTIONS), nnx.Rngs(1)) == 14
    np.testing.assert_array_equal(_ours(adapted, ids, mask), base)
    trainable = [tuple(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(adapted, LoRAParam))]
    assert trainable and all(p[-1] in ("lora_a", "lora_b") for p in trainable)
    q = adapted.layers[0].self_attn.q_proj
    assert (q.bias is not None) == model.config.attention_bias  # the wrapped projection keeps its bias


def test_sharded_forward_equals_one_device(loaded):
    if jax.device_count() < 4:
        pytest.skip("needs 4 (virtual) devices; see tests/conftest.py")
    _, _, model, _ = loaded
    ids, mask = _left_padded()
    sharded = parallel.shard_model(nnx.clone(model), parallel.make_mesh((1, 2, 2), devices=jax.devices()[:4]))
    if model.config.attention_bias:  # a bias shards over heads like its kernel's output axis
        assert sharded.layers[0].self_attn.k_proj.bias[...].sharding.spec == jax.sharding.PartitionSpec("tensor")
    np.testing.assert_allclose(_ours(sharded, ids[:2], mask[:2]), _ours(model, ids[:2], mask[:2]), atol=1e-5, rtol=0)


def test_config_round_trips_through_transformers_and_counts_params(loaded):
    family, ref, model, _ = loaded
    config = model.config
    hf = config.to_hf()
    assert hf["model_type"] == family and hf["architectures"] == [type(ref).__name__]
    again = LlamaConfig.from_hf(type(ref.config)(**hf).to_dict())
    assert again == dataclasses.replace(config, head_dim=config.resolved_head_dim)  # to_hf states head_dim
    assert config.num_params() == sum(p.numel() for p in ref.parameters())


def test_qwen2_sliding_window_is_refused():
    hf = LlamaConfig.preset("tiny-qwen2").to_hf()
    with pytest.raises(ValueError, match="use_sliding_window=true .* not supported for qwen2"):
        LlamaConfig.from_hf({**hf, "use_sliding_window": True, "sliding_window": 8})
