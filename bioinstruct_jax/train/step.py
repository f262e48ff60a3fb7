"""Pure pieces of the LoRA training step: optimizer, loss, and the jitted train / eval steps.

State is split the NNX way into four trees, in this order everywhere:

    graphdef, lora, rng, base = nnx.split(model, LoRAParam, nnx.RngState, ...)

`lora` (f32 `LoRAParam`s) is the only thing differentiated and updated; `rng` is the LoRA dropout
RNG state (keys + counters, carried through the step); `base` is everything else (the frozen bf16
`nnx.Param`s), passed into the step as a plain, never-differentiated, never-donated input. Freezing
therefore happens by what the optimizer is given (`tx.init(lora)`), not by `optax.masked`.

`build_train_step` returns `jax.jit(step, in_shardings=…, out_shardings=…, donate_argnums=…)` over
`(lora, opt_state, base, rng, batch)`, where every batch array is [k, b, T]: k = grad_accum
micro-batches scanned with `lax.scan`, gradients summed in f32 and divided by the total number of
target tokens, so k micro-batches of b rows give the same update as one batch of k*b rows.
Building it has no side effects (nothing is traced or allocated until it is called or lowered), so
the memory planner can `.lower(*abstract_args).compile()` the real step from ShapeDtypeStructs.

We use `jax.jit` with explicit shardings rather than `nnx.Optimizer(wrt=LoRAParam)` + `nnx.jit`:
the shardings and donation of each argument are then visible in one place and the same function
compiles from abstract shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from bioinstruct_jax.data.batch import BATCH_KEYS
from bioinstruct_jax.model.lm_loss import token_cross_entropy
from bioinstruct_jax.model.lora import LoRAParam
from bioinstruct_jax.config.sections import OptimConfig
from bioinstruct_jax.parallel import sharding


def split_model(model: nnx.Module):
    """(graphdef, lora, rng, base): the state split used by every step function."""
    return nnx.split(model, LoRAParam, nnx.RngState, ...)


def split_for_modes(model: nnx.Module):
    """(train_graphdef, eval_graphdef, lora, rng, base): dropout on / off graphdefs of one model."""
    model.eval()
    eval_graphdef = nnx.split(model, LoRAParam, nnx.RngState, ...)[0]
    model.train()
    train_graphdef, lora, rng, base = split_model(model)
    return train_graphdef, eval_graphdef, lora, rng, base


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr over warmup_steps, then cosine / linear decay (or constant)."""
    total = max(int(total_steps), 1)
    warmup = min(cfg.warmup_steps, total)
    end = cfg.lr * cfg.end_lr_ratio
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, max(total - warmup, 1), alpha=cfg.end_lr_ratio)
    else:
        decay = optax.linear_schedule(cfg.lr, end, max(total - warmup, 1))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule); give it the LoRA state only (`tx.init(lora)`)."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


def loss_fn(model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token cross-entropies, number of target tokens), both f32.

    `targets[t]` is the token after `input_ids[t]`; `loss_mask` selects response tokens. The LM
    head and the loss run chunked over positions (`model.lm_loss`): the full [B, T, V] logits are
    never materialised, in the forward or the backward pass.
    """
    hidden, _ = model.hidden_states(batch["input_ids"], positions=batch["positions"],
                                    segment_ids=batch["segment_ids"])
    return token_cross_entropy(model, hidden, batch["targets"], batch["loss_mask"])


@dataclasses.dataclass(frozen=True)
class StepShardings:
    """Shardings of the step's arguments: state trees (same structure as the states) and the batch.

    batch: one sharding for every [k, b, T] batch array (micro-batch axis replicated, rows split
    over the batch mesh axes). eval_batch: the same for [b, T] arrays of the eval step.
    """

    lora: Any
    opt: Any
    base: Any
    rng: Any
    batch: Any
    eval_batch: Any
    replicated: Any


def step_shardings(mesh: jax.sharding.Mesh, lora: Any, opt_state: Any, base: Any, rng: Any) -> StepShardings:
    """Shardings from the logical-axis rules (parameters) and propagation (optimizer state)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    batch2 = sharding.batch_sharding(mesh)
    batch3 = NamedSharding(mesh, PartitionSpec(None, *batch2.spec))
    return StepShardings(
        lora=sharding.state_shardings(lora, mesh),
        opt=optimizer_shardings(opt_state, mesh),
        base=sharding.state_shardings(base, mesh),
        rng=sharding.state_shardings(rng, mesh),
        batch=batch3, eval_batch=batch2, replicated=replicated,
    )


def optimizer_shardings(opt_state: Any, mesh: jax.sharding.Mesh) -> Any:
    """Each optimizer leaf keeps its NamedSharding on `mesh` (moments follow their parameter, as
    `jax.jit(tx.init)` propagates them); anything else (step counters) is replicated."""
    return jax.tree.map(lambda x: optimizer_leaf_sharding(getattr(x, "sharding", None), mesh), opt_state)


def optimizer_leaf_sharding(current: Any, mesh: jax.sharding.Mesh) -> NamedSharding:
    """`current` (a leaf's sharding) when it is a NamedSharding on a mesh of `mesh`'s shape, else
    replicated on `mesh`."""
    if isinstance(current, NamedSharding) and current.mesh.shape == mesh.shape:
        return current
    return NamedSharding(mesh, PartitionSpec())


def init_optimizer(tx: optax.GradientTransformation, lora: Any, lora_shardings: Any = None) -> Any:
    """`tx.init(lora)` under jit, so moments are created already sharded like their parameters."""
    if lora_shardings is None:
        return jax.jit(tx.init)(lora)
    return jax.jit(tx.init, in_shardings=(lora_shardings,))(lora)


def _micro_batches(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: batch[k] for k in BATCH_KEYS}


def build_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                     shardings: StepShardings | None = None, donate: bool = True,
                     loss: Callable = loss_fn, skip_nonfinite: bool = False) -> Callable:
    """The jitted step `(lora, opt_state, base, rng, batch[k,b,T]) -> (lora, opt_state, rng, metrics)`.

    metrics: {"loss": mean token CE (f32), "tokens": target tokens, "grad_norm": before clipping}.
    Donates lora, opt_state and rng (arguments 0, 1, 3) when `donate`. skip_nonfinite: a step
    whose loss or gradient norm is NaN/Inf keeps the previous LoRA weights and optimizer state
    (the update is dropped on the device, no host round trip; `nonfinite.NonFiniteGuard` counts it).
    """

    def step(lora, opt_state, base, rng, batch):
        zeros = jax.tree.map(jnp.zeros_like, lora)

        def micro(carry, mb):
            grads_acc, loss_acc, tok_acc, rng_state = carry
            # Tie the frozen weights to this micro-batch: otherwise their all-gathers (and dtype
            # converts) are loop-invariant, get hoisted out of the scan, and every device holds the
            # whole gathered model for the entire step.
            base_mb, mb = jax.lax.optimization_barrier((base, mb))

            def objective(lora_):
                model = nnx.merge(graphdef, lora_, rng_state, base_mb, copy=True)
                total, count = loss(model, mb)
                return total, (count, nnx.state(model, nnx.RngState))

            (total, (count, rng_state)), grads = jax.value_and_grad(objective, has_aux=True)(lora)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            return (grads_acc, loss_acc + total, tok_acc + count, rng_state), None

        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), rng)
        (grads, loss_sum, tokens, rng), _ = jax.lax.scan(micro, init, _micro_batches(batch))
        denom = jnp.maximum(tokens, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, new_opt_state = tx.update(grads, opt_state, lora)
        new_lora = optax.apply_updates(lora, updates)
        metrics = {"loss": loss_sum / denom, "tokens": tokens, "grad_norm": optax.tree.norm(grads)}
        if skip_nonfinite:
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_lora = jax.tree.map(keep, new_lora, lora)
            new_opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        return new_lora, new_opt_state, rng, metrics

    donate_argnums = (0, 1, 3) if donate else ()
    if shardings is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    s = shardings
    metric_sh = {"loss": s.replicated, "tokens": s.replicated, "grad_norm": s.replicated}
    return jax.jit(step, in_shardings=(s.lora, s.opt, s.base, s.rng, s.batch),
                   out_shardings=(s.lora, s.opt, s.rng, metric_sh), donate_argnums=donate_argnums)


def build_eval_step(graphdef: nnx.GraphDef, *, shardings: StepShardings | None = None,
                    loss: Callable = loss_fn) -> Callable:
    """The jitted `(lora, base, rng, batch[b,T]) -> (sum CE, tokens)` (use the eval-mode graphdef)."""

    def step(lora, base, rng, batch):
        model = nnx.merge(graphdef, lora, rng, base, copy=True)
        return loss(model, _micro_batches(batch))

    if shardings is None:
        return jax.jit(step)
    s = shardings
    return jax.jit(step, in_shardings=(s.lora, s.base, s.rng, s.eval_batch),
                   out_shardings=(s.replicated, s.replicated))


def stack_micro_batches(batch: dict[str, Any], grad_accum: int) -> dict[str, Any]:
    """Host-side [k*b, T] -> [k, b, T] (micro-batch i = rows i*b .. (i+1)*b - 1)."""
    out = {}
    for key in BATCH_KEYS:
        x = batch[key]
        rows = x.shape[0]
        if rows % grad_accum:
            raise ValueError(f"batch of {rows} rows cannot be split into optim.grad_accum={grad_accum} "
                             f"equal micro-batches")
        out[key] = x.reshape((grad_accum, rows // grad_accum) + tuple(x.shape[1:]))
    return out


__all__ = [
    "BATCH_KEYS", "split_model", "split_for_modes", "make_schedule", "make_optimizer", "loss_fn",
    "StepShardings", "step_shardings", "optimizer_shardings", "optimizer_leaf_sharding", "init_optimizer", "build_train_step",
    "build_eval_step", "stack_micro_batches",
]
