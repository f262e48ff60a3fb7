"""NaN/Inf: rejected in the config, and a run stops (or skips the batch) without saving a bad state."""

from __future__ import annotations

import numpy as np
import pytest

from bioinstruct_jax.config import ConfigError, load_run_config


@pytest.mark.parametrize("override", ["optim.lr=.nan", "optim.lr=nan", "optim.grad_clip=.inf",
                                      "lora.alpha=-.inf", "train.epochs=.nan"])
def test_non_finite_config_values_are_rejected_naming_the_key(override):
    key = override.split("=")[0].split(".")[-1]
    with pytest.raises(ConfigError, match=rf"{key} = .*expected a finite number"):
        load_run_config(None, [override])


class _PoisonedIterator:
    """The pipeline's train iterator with a NaN loss mask in batch number `bad` (1-based)."""

    def __init__(self, inner, bad: int):
        self.inner, self.bad, self.n = inner, bad, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = dict(next(self.inner))
        self.n += 1
        mask = np.asarray(batch["loss_mask"], np.float32)
        batch["loss_mask"] = mask * np.float32(np.nan) if self.n == self.bad else mask
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def _run(tmp_path, bad_batch: int, **extra):
    from bioinstruct_jax.train import loop as train
    from train_helpers import tiny_overrides, write_task

    train_file, val_file, tok = write_task(tmp_path / "data", 64, 16)
    cfg = load_run_config(None, tiny_overrides(tmp_path / "run", train_file, val_file, **{
        "train.steps": 4, "train.save_every": 2, "train.async_checkpointing": False, **extra}))
    inner = train.run_data_factory(cfg, tok)

    def factory(split):
        it = inner(split)
        return _PoisonedIterator(it, bad_batch) if split == "train" else it

    factory.num_examples = inner.num_examples
    return train.run(cfg, tokenizer=tok, data_factory=factory, verbose=False)


def _saved_steps(run_dir):
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("log_every", [1, 0])
def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, log_every):
    """log_every=1: caught at the next metrics fetch; 0: caught before the save of step 4."""
    from bioinstruct_jax.checkpoint.integrity import verify_step
    from bioinstruct_jax.train.nonfinite import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"NaN/Inf at step 3;") as info:
        _run(tmp_path, bad_batch=3, **{"train.log_every": log_every})
    assert info.value.step == 3
    assert _saved_steps(tmp_path / "run") == [2]  # the NaN state of step 4 was never saved
    verify_step(tmp_path / "run" / "checkpoints" / "2")


def test_skip_nonfinite_batches_drops_the_bad_update_and_finishes(tmp_path, capsys):
    import jax

    from bioinstruct_jax.checkpoint.orbax import RunCheckpointer

    result = _run(tmp_path, bad_batch=3, **{"train.skip_nonfinite_batches": 1})
    assert result.step == 4 and np.isfinite(result.final_loss)
    assert "skipped 1 batch(es) with a NaN/Inf loss or gradient (last at step 3" in capsys.readouterr().out
    ckpt = RunCheckpointer(str(tmp_path / "run"), read_only=True)
    try:
        assert ckpt.all_steps() == [2, 4]
    finally:
        ckpt.close()
    from flax import nnx

    from bioinstruct_jax.model.lora import LoRAParam

    lora = nnx.state(result.model, LoRAParam)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(lora))


def test_skip_budget_exceeded_stops(tmp_path):
    from bioinstruct_jax.train.nonfinite import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"more than train.skip_nonfinite_batches=1"):
        _run(tmp_path, bad_batch=1, **{"train.skip_nonfinite_batches": 1, "optim.lr": 1e30})
