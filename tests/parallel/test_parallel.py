"""Sharding on 8 virtual CPU devices: sharded results equal single-device ones, rules are obeyed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bioinstruct_jax.parallel import sharding as parallel
from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.model.lora import LoraConfig, LoRAParam, apply_lora
from bioinstruct_jax.parallel.sharding import MeshConfig, ShardingError

CFG = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64)
MESHES = [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)]

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices; see tests/conftest.py")


def make_model() -> Llama:
    """Tiny LLaMA with LoRA on every projection and non-zero B, so adapters affect outputs and grads."""
    model = Llama(CFG, rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(r=4, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")),
               nnx.Rngs(1))
    for i, (_, var) in enumerate(sorted(nnx.to_flat_state(nnx.state(model, LoRAParam)), key=lambda kv: str(kv[0]))):
        if var.shape[0] == 4:  # lora_b [r, out]
            var.set_value(0.05 * jax.random.normal(jax.random.key(100 + i), var.shape))
    return model


def batch(n: int = 8, t: int = 16):
    ids = jax.random.randint(jax.random.key(7), (n, t), 0, CFG.vocab_size)
    seg = jnp.ones((n, t), jnp.int32).at[0, -5:].set(0)  # one right-padded row
    return ids, seg


def loss_fn(model, ids, seg):
    logits = model(ids, segment_ids=seg)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
    mask = (seg[:, 1:] > 0).astype(jnp.float32)
    return jnp.sum(losses * mask) / jnp.sum(mask)


@nnx.jit
def forward(model, ids, seg):
    return model(ids, segment_ids=seg)


@nnx.jit
def lora_grads(model, ids, seg):
    return nnx.grad(loss_fn, argnums=nnx.DiffState(0, LoRAParam))(model, ids, seg)


@pytest.fixture(scope="module")
def single_device_model():
    with jax.default_device(jax.devices()[0]):
        return make_model()


@pytest.fixture(scope="module")
def reference(single_device_model):
    model = single_device_model
    with jax.default_device(jax.devices()[0]):
        ids, seg = batch()
        logits = np.asarray(forward(model, ids, seg))
        grads = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(lora_grads(model, ids, seg))}
    return logits, grads


def assert_shardings_follow_rules(model, mesh):
    sharded_big = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        axes = var.get_metadata()["logical_axes"]
        value = var.get_value()
        want = parallel.logical_to_spec(axes)
        got = value.sharding
        assert isinstance(got, jax.sharding.NamedSharding), path
        assert got.mesh.shape == mesh.shape
        assert tuple(got.spec) + (None,) * (value.ndim - len(got.spec)) == tuple(want) + (None,) * (value.ndim - len(want)), (
            f"{'/'.join(map(str, path))}: sharding {got.spec}, rule says {want}")
        if value.ndim == 2 and isinstance(var, nnx.Param) and type(var) is nnx.Param:
            if mesh.shape["fsdp"] * mesh.shape["tensor"] > 1:
                # no large base weight is replicated when the mesh has a model-sharding axis
                assert not got.is_fully_replicated, f"{'/'.join(map(str, path))} is replicated on {mesh.shape}"
                shard = got.shard_shape(value.shape)
                assert np.prod(shard) * mesh.shape["fsdp"] * mesh.shape["tensor"] == value.size
                sharded_big += 1
    return sharded_big


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_and_lora_grads_match_single_device(shape, reference):
    ref_logits, ref_grads = reference
    mesh = parallel.make_mesh(shape)
    assert dict(mesh.shape) == dict(zip(parallel.MESH_AXES, shape))
    model = parallel.shard_model(make_model, mesh)  # created straight into its shards
    n = assert_shardings_follow_rules(model, mesh)
    if shape != (8, 1, 1):
        assert n == 2 * 7 + 2  # every projection kernel, the embedding and lm_head are sharded
    ids, seg = (jax.device_put(x, parallel.batch_sharding(mesh)) for x in batch())
    logits = forward(model, ids, seg)
    want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor"))
    assert logits.sharding.is_equivalent_to(want, logits.ndim), logits.sharding
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-5, rtol=0)
    grads = lora_grads(model, ids, seg)
    flat = nnx.to_flat_state(grads)
    assert len(flat) == len(ref_grads) == 2 * 5 * CFG.num_hidden_layers
    for path, var in flat:
        np.testing.assert_allclose(np.asarray(var.get_value()), ref_grads[path], atol=1e-5, rtol=0,
                                   err_msg="/".join(map(str, path)))
    assert max(float(np.abs(v.get_value()).max()) for _, v in flat) > 1e-3  # gradients are not trivially zero


def test_moving_an_existing_model_keeps_values(single_device_model):
    mesh = parallel.make_mesh((1, 4, 2))
    moved = parallel.shard_model(nnx.clone(single_device_model), mesh)
    assert_shardings_follow_rules(moved, mesh)
    weights = nnx.Any(nnx.Param, LoRAParam)
    pairs = zip(nnx.to_flat_state(nnx.state(single_device_model, weights)), nnx.to_flat_state(nnx.state(moved, weights)))
    for (p1, a), (p2, b) in pairs:
        assert p1 == p2
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))


def test_rules_table_covers_every_model_axis():
    model = nnx.eval_shape(make_model)
    names = {a for _, v in nnx.to_flat_state(nnx.state(model)) for a in v.get_metadata().get("logical_axes", ())}
    names |= {"batch", "length", "act_embed", "act_heads", "act_kv_heads", "act_mlp", "act_vocab"}
    assert names <= set(parallel.DEFAULT_RULES)
    assert parallel.logical_to_spec(("embed", "heads")) == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert parallel.logical_to_spec(("batch", "length", "act_heads", None)) == jax.sharding.PartitionSpec(
        ("data", "fsdp"), None, "tensor", None)
    with pytest.raises(ShardingError, match="'nonsense' has no rule"):
        parallel.logical_to_spec(("nonsense",))
    with pytest.raises(ShardingError, match="both map to mesh axis 'tensor'"):
        parallel.logical_to_spec(("heads", "mlp"))


def test_load_pretrained_onto_mesh_matches_unsharded_load(tmp_path):
    pytest.importorskip("transformers")
    from bioinstruct_jax.checkpoint.hf import load_pretrained
    from hf_fixtures import write_tiny_llama

    write_tiny_llama(tmp_path, "mha_untied", intermediate_size=128)
    plain, _ = load_pretrained(tmp_path, dtype=jnp.float32)
    for shape in [(1, 4, 2)]:
        mesh = parallel.make_mesh(shape)
        sharded, _ = load_pretrained(tmp_path, dtype=jnp.float32, mesh=mesh)
        assert_shardings_follow_rules(sharded, mesh)
        for (p1, a), (p2, b) in zip(nnx.to_flat_state(nnx.state(plain)), nnx.to_flat_state(nnx.state(sharded))):
            assert p1 == p2
            np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))
        parallel.set_constraint(sharded, parallel.activation_constraint(mesh))
        ids = jax.random.randint(jax.random.key(3), (8, 12), 0, 128)
        np.testing.assert_allclose(np.asarray(forward(sharded, jax.device_put(ids, parallel.batch_sharding(mesh)),
                                                      jnp.ones((8, 12), jnp.int32))),
                                   np.asarray(forward(plain, ids, jnp.ones((8, 12), jnp.int32))), atol=1e-5, rtol=0)


def test_bad_mesh_shapes_fail_with_sizes():
    with pytest.raises(ShardingError, match=r"needs 4 devices but 8 are available"):
        parallel.make_mesh((2, 2, 1))
    with pytest.raises(ShardingError, match=r"8 devices are not divisible by the fixed axes \(data=3"):
        parallel.make_mesh(MeshConfig(data=3, fsdp=-1))
    with pytest.raises(ShardingError, match="only one axis may be -1"):
        parallel.make_mesh(MeshConfig(data=-1, fsdp=-1))
    assert MeshConfig(data=2, fsdp=-1, tensor=2).resolve(8) == (2, 2, 2)
    assert parallel.make_mesh(MeshConfig(), devices=jax.devices()[:1]).shape["fsdp"] == 1


def test_indivisible_dimensions_fail_naming_tensor_axis_and_sizes():
    mesh = parallel.make_mesh((1, 2, 3), devices=jax.devices()[:6])
    model = nnx.eval_shape(make_model)
    fn = parallel.param_sharding_fn(mesh)
    with pytest.raises(ShardingError, match=r"kv_heads dimension of layers/0/self_attn/k_proj/kernel \(size 32\) "
                                            r"is not divisible by mesh axis 'tensor' \(size 3\)"):
        fn(("layers", 0, "self_attn", "k_proj", "kernel"), model.layers[0].self_attn.k_proj.kernel)
    with pytest.raises(ShardingError, match=r"vocab dimension of embed_tokens/embedding \(size 256\)"):
        parallel.model_shardings(model, mesh)
    # activations: a batch the data x fsdp axes cannot split
    mesh = parallel.make_mesh((1, 4, 2))
    constrain = parallel.activation_constraint(mesh)
    with pytest.raises(ShardingError, match=r"batch dimension of activation .* \(size 6\) is not divisible by mesh "
                                            r"axes \('data', 'fsdp'\) \(sizes \(1, 4\), product 4\)"):
        jax.jit(lambda x: constrain(x, ("batch", "length", "act_embed")))(jnp.zeros((6, 4, 64)))
