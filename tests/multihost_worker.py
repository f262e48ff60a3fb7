"""One process of the 2-process CPU test in test_multihost.py (also importable for the reference).

    python tests/multihost_worker.py OUT_DIR

with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set: joins the job through
`maybe_initialize_distributed`, builds the tiny LoRA model on a (1, 2, 2) mesh spanning both
processes, feeds each host its own rows, and writes the gathered logits and LoRA gradients to
OUT_DIR/result_<process>.npz.
"""

from __future__ import annotations

import os
import sys

MESH = (1, 2, 2)
GLOBAL_BATCH = 4


def make_model():
    from flax import nnx
    import jax

    from bioinstruct_jax.model.config import LlamaConfig
    from bioinstruct_jax.model.decoder import Llama
    from bioinstruct_jax.model.lora import LoraConfig, LoRAParam, apply_lora

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = Llama(config, rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(r=4, dropout=0.0), nnx.Rngs(1))
    for i, (_, var) in enumerate(sorted(nnx.to_flat_state(nnx.state(model, LoRAParam)), key=lambda kv: str(kv[0]))):
        if var.shape[0] == 4:
            var.set_value(0.05 * jax.random.normal(jax.random.key(100 + i), var.shape))
    return model


def global_batch():
    import numpy as np

    return np.random.default_rng(0).integers(0, 128, size=(GLOBAL_BATCH, 10)).astype(np.int32)


def forward_and_grads(model, ids):
    """(logits, {path: LoRA grad}) as jax arrays, jitted."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from bioinstruct_jax.model.lora import LoRAParam

    def loss_fn(m, x):
        logits = m(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], x[:, 1:]))

    @nnx.jit
    def step(m, x):
        return m(x), nnx.grad(loss_fn, argnums=nnx.DiffState(0, LoRAParam))(m, x)

    logits, grads = step(model, ids)
    return logits, {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(grads)}


def main(out_dir: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import numpy as np
    from jax.experimental import multihost_utils

    from bioinstruct_jax.parallel import sharding as parallel
    from bioinstruct_jax.parallel.distributed import global_batch_from_host, host_batch_slice, maybe_initialize_distributed

    assert maybe_initialize_distributed(), "coordinator variables were not detected"
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = parallel.make_mesh(MESH)
    model = parallel.shard_model(make_model, mesh)
    rows = host_batch_slice(GLOBAL_BATCH)
    ids = global_batch_from_host(global_batch()[rows], mesh)
    assert ids.shape == (GLOBAL_BATCH, 10) and not ids.is_fully_addressable
    logits, grads = forward_and_grads(model, ids)
    gathered = {"logits": multihost_utils.process_allgather(logits, tiled=True)}
    gathered.update({f"grad:{k}": multihost_utils.process_allgather(v, tiled=True) for k, v in grads.items()})
    np.savez(os.path.join(out_dir, f"result_{jax.process_index()}.npz"), rows=np.array([rows.start, rows.stop]),
             **{k: np.asarray(v) for k, v in gathered.items()})
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
