"""The phases of `train/loop.run`, each called alone on a tiny run of the synthetic task: the cheap
checks write nothing, the loop phases train / validate / save / finish as `run` would, a new
setup on the same folder restores the saved state and data position, and `validate` agrees with a
numpy cross-entropy over the model's logits."""

from __future__ import annotations

import ast
import json
import pathlib

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from bioinstruct_jax.config import ConfigError, load_run_config  # noqa: E402
from bioinstruct_jax.model.lora import LoRAParam  # noqa: E402
from bioinstruct_jax.train import loop  # noqa: E402
from train_helpers import tiny_overrides, write_task  # noqa: E402

STEPS = 4


def _setup(cfg, tok, lock):
    checked = loop.check_run(cfg, tok)
    return loop.open_run(cfg, checked, lock, verbose=False)


def _host(x) -> np.ndarray:
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # typed PRNG keys
        x = jax.random.key_data(x)
    return np.asarray(x)


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(_host(x), _host(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The phases of `run`, in its order, over 4 steps (saves at 2 and 4, validation at 2 and 4)."""
    root = tmp_path_factory.mktemp("phases")
    train_file, val_file, tok = write_task(root / "data", n_train=64, n_val=24)
    cfg = load_run_config(None, tiny_overrides(root / "run", train_file, val_file, **{
        "train.steps": STEPS, "train.save_every": 2, "train.eval_every": 2, "train.eval_batches": 1,
        "train.plot": True, "data.batch_size": 8, "lora.r": 4, "lora.alpha": 8,
        "lora.dropout": 0.1}))  # dropout draws from the RNG state, so the state moves and must be saved
    lock = loop.take_run_lock(cfg)
    try:
        setup = _setup(cfg, tok, lock)
        tx, schedule = loop.build_optimizer(setup)
        state = loop.init_state(setup, tx)
        steps = loop.build_steps(setup, state, tx, schedule)
        train_iter = setup.data_factory("train")
        state, start = loop.restore_state(setup, state, train_iter)
        logs = loop.open_logs(setup, state, start)
        state, progress = loop.train_steps(setup, steps, state, train_iter, logs, start)
        result = loop.finish(setup, state, logs, progress)
    finally:
        lock.release()
    return cfg, tok, setup, steps, state, result


def test_every_function_of_the_loop_fits_on_a_screen():
    tree = ast.parse(pathlib.Path(loop.__file__).read_text(encoding="utf-8"))
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60}
    assert not long, long


def test_the_cheap_checks_write_nothing_and_a_bad_batch_split_is_a_config_error(tmp_path):
    train_file, val_file, tok = write_task(tmp_path / "data", n_train=16, n_val=8)
    cfg = load_run_config(None, tiny_overrides(tmp_path / "run", train_file, val_file, **{"optim.grad_accum": 3}))
    checked = loop.check_run(cfg, tok)
    assert checked.signature["base"] and dict(checked.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="batch_size=16 is not divisible by optim.grad_accum=3"):
        loop.check_batch_split(cfg, checked.mesh)


def test_the_loop_phases_train_validate_save_and_finish(trained):
    cfg, _, setup, _, state, result = trained
    out = pathlib.Path(cfg.train.output_dir)
    assert (result.step, result.total_steps, result.preempted) == (STEPS, STEPS, False)
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    assert (out / "run_config.yaml").is_file() and result.loss_curve and pathlib.Path(result.loss_curve).is_file()
    # finish put the trained LoRA weights back into the model
    assert _leaves_equal(nnx.state(result.model, LoRAParam), state.lora)
    assert not _leaves_equal(nnx.state(loop.init_state(setup, loop.build_optimizer(setup)[0]).model, LoRAParam),
                             state.lora)


def test_a_new_setup_on_the_folder_restores_weights_rng_and_data_position(trained):
    cfg, tok, _, _, state, _ = trained
    lock = loop.take_run_lock(cfg)
    try:
        setup = _setup(cfg, tok, lock)
        assert setup.resume_step == STEPS
        fresh = loop.init_state(setup, loop.build_optimizer(setup)[0])
        train_iter = setup.data_factory("train")
        restored, start = loop.restore_state(setup, fresh, train_iter)
    finally:
        lock.release()
    assert start == STEPS
    assert not _leaves_equal(fresh.rng, state.rng)  # else a lost RNG state would go unseen
    assert _leaves_equal(restored.lora, state.lora) and _leaves_equal(restored.rng, state.rng)
    assert _leaves_equal(restored.opt_state, state.opt_state)
    reference = setup.data_factory("train")
    for _ in range(STEPS):
        next(reference)
    assert _leaves_equal(next(train_iter), next(reference))  # the batch after the 4th, not the first


def test_validate_is_the_mean_cross_entropy_of_the_first_eval_batches(trained):
    _, _, setup, steps, state, result = trained
    batch = next(iter(setup.data_factory("val")))
    model = result.model
    model.eval()
    logits = np.asarray(model(jnp.asarray(batch["input_ids"]), positions=jnp.asarray(batch["positions"]),
                              segment_ids=jnp.asarray(batch["segment_ids"])), dtype=np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
    mask = batch["loss_mask"].astype(bool)
    expected = nll[mask].mean()  # train.eval_batches=1: the first batch only
    assert loop.validate(setup, steps, state) == pytest.approx(expected, rel=1e-4)
