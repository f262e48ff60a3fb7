"""LoRA training: learns a synthetic task, accumulation equals one big batch, base frozen, bad input fails fast."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from bioinstruct_jax.checkpoint import factory as model_factory  # noqa: E402
from bioinstruct_jax.checkpoint.restore import restore_run  # noqa: E402
from bioinstruct_jax.train import __main__ as train_cli  # noqa: E402
from bioinstruct_jax.train import loop as train  # noqa: E402
from bioinstruct_jax.train import step as ts
from bioinstruct_jax.checkpoint.orbax import CheckpointMismatchError  # noqa: E402
from bioinstruct_jax.config import ConfigError, load_run_config  # noqa: E402
from bioinstruct_jax.model.config import LlamaConfig  # noqa: E402
from bioinstruct_jax.model.decoder import Llama  # noqa: E402
from bioinstruct_jax.model.lora import LoraConfig, apply_lora  # noqa: E402
from bioinstruct_jax.config.sections import OptimConfig  # noqa: E402
from train_helpers import tiny_overrides, write_task  # noqa: E402


def exact_match(model, factory) -> float:
    """Share of held-out items whose every answer token (and EOS) is the argmax given the correct
    prefix, which is exactly when greedy decoding reproduces the answer."""
    hit = total = 0
    for batch in factory("val"):
        logits = model(jnp.asarray(batch["input_ids"]), positions=jnp.asarray(batch["positions"]),
                       segment_ids=jnp.asarray(batch["segment_ids"]))
        pred = np.asarray(jnp.argmax(logits, -1))
        answer = batch["loss_mask"].astype(bool)
        real = batch["segment_ids"].sum(1) > 0
        ok = ((pred == batch["targets"]) | ~answer).all(1)
        hit += int(ok[real].sum())
        total += int(real.sum())
    return hit / total


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    train_file, val_file, tok = write_task(root / "data")
    cfg = load_run_config(None, tiny_overrides(root / "run", train_file, val_file,
                                               **{"train.steps": 400, "optim.lr": 0.003}))
    factory = train.run_data_factory(cfg, tok)
    before = model_factory.build_model(cfg, model_factory.resolve_llama_config(cfg, tok), train.make_run_mesh(cfg))
    before.eval()
    em_before = exact_match(before, factory)
    result = train.run(cfg, tokenizer=tok, verbose=False)
    return cfg, tok, factory, result, em_before


def test_lora_learns_synthetic_task_from_chance_to_95_percent(learned):
    cfg, tok, factory, result, em_before = learned
    assert em_before < 0.2
    model = result.model
    model.eval()
    assert exact_match(model, factory) >= 0.95
    # the saved adapter reproduces it
    run = restore_run(cfg.train.output_dir)
    restored, run_cfg = run.model, run.config
    assert run_cfg == cfg
    assert exact_match(restored, factory) >= 0.95


def test_checkpoint_of_a_different_model_fails_before_compile(learned, monkeypatch):
    cfg, tok, _, _, _ = learned

    def boom(*a, **k):
        raise AssertionError("compiled the step before checking the checkpoint")

    monkeypatch.setattr(ts, "build_train_step", boom)
    monkeypatch.setattr(model_factory, "build_model", boom)
    other = load_run_config(None, tiny_overrides(cfg.train.output_dir, cfg.data.train_file, cfg.data.val_file,
                                                 **{"lora.r": 4}))
    with pytest.raises(CheckpointMismatchError, match=r"lora.*'r': 16.*'r': 4|different model"):
        train.run(other, tokenizer=tok, verbose=False)


def test_config_typo_and_missing_data_fail_fast(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("built the model before validating the config")

    monkeypatch.setattr(model_factory, "build_model", boom)
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_run_config(None, ["optim.lrr=0.1"])
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("optim:\n  warmup_stpes: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*warmup_stpes.*warmup_steps"):
        load_run_config(cfg_file)
    train_file, val_file, tok = write_task(tmp_path / "data")
    cfg = load_run_config(None, tiny_overrides(tmp_path / "run", tmp_path / "missing.jsonl", val_file))
    with pytest.raises(ConfigError, match="data.train_file.*missing.jsonl does not exist"):
        train.run(cfg, tokenizer=tok, verbose=False)
    assert train_cli.main(["train.output_dir=" + str(tmp_path / "r2"), "data.train_file=/nonexistent.jsonl"]) == 2


def _tiny_split(dropout=0.0):
    model = Llama(LlamaConfig.preset("tiny"), rngs=nnx.Rngs(0), param_dtype=jnp.float32, dtype=jnp.float32)
    apply_lora(model, LoraConfig(r=4, dropout=dropout, targets=("q_proj", "v_proj", "up_proj")),
               nnx.Rngs(params=1, dropout=2))
    return ts.split_for_modes(model)


def _batch(rows, t=24, seed=0):
    r = np.random.default_rng(seed)
    lengths = r.integers(t // 2, t + 1, rows)
    seg = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": r.integers(0, 512, (rows, t)).astype(np.int32),
            "targets": r.integers(0, 512, (rows, t)).astype(np.int32),
            "loss_mask": (seg * (r.random((rows, t)) > 0.4)).astype(np.int32),
            "segment_ids": seg, "positions": np.tile(np.arange(t, dtype=np.int32), (rows, 1))}


def test_step_loss_is_the_mean_cross_entropy_over_response_tokens_only():
    """The step's loss is the cross-entropy of the masked (response) targets only, averaged over
    them, computed here in numpy from the model's logits; the prompt targets do not count."""
    graphdef, _, lora, rng, base = _tiny_split()
    batch = _batch(4)
    model = nnx.merge(graphdef, lora, rng, base)
    logits = np.asarray(model(jnp.asarray(batch["input_ids"]), positions=jnp.asarray(batch["positions"]),
                              segment_ids=jnp.asarray(batch["segment_ids"])), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    ce = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    mask = batch["loss_mask"].astype(bool)
    assert 0 < mask.sum() < (batch["segment_ids"] > 0).sum()  # some real targets are prompt tokens
    tx = ts.make_optimizer(OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant"), 10)
    metrics = ts.build_train_step(graphdef, tx, donate=False)(
        lora, ts.init_optimizer(tx, lora), base, rng, ts.stack_micro_batches(batch, 1))[3]
    assert float(metrics["tokens"]) == mask.sum()
    assert float(metrics["loss"]) == pytest.approx(ce[mask].mean(), rel=1e-5)
    assert abs(ce[mask].mean() - ce[batch["segment_ids"] > 0].mean()) > 1e-3  # the mask matters here


def test_grad_accumulation_equals_one_big_batch():
    graphdef, _, lora, rng, base = _tiny_split()
    tx = ts.make_optimizer(OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant", grad_clip=1.0), 10)
    opt = ts.init_optimizer(tx, lora)
    step = ts.build_train_step(graphdef, tx, donate=False)
    batch = _batch(8)
    one = step(lora, opt, base, rng, ts.stack_micro_batches(batch, 1))
    four = step(lora, opt, base, rng, ts.stack_micro_batches(batch, 4))
    assert ts.stack_micro_batches(batch, 4)["input_ids"].shape == (4, 2, 24)
    np.testing.assert_allclose(float(one[3]["loss"]), float(four[3]["loss"]), rtol=1e-6)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), one[0], four[0]))
    assert max(diffs) <= 1e-5
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), one[0], lora))
    assert max(moved) > 1e-4  # the update itself is not trivially zero


def test_only_lora_weights_change_base_bitwise_equal():
    graphdef, _, lora, rng, base = _tiny_split(dropout=0.1)
    base_before = jax.tree.map(np.asarray, base)
    lora_before = jax.tree.map(np.asarray, lora)
    tx = ts.make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0), 10)
    opt = ts.init_optimizer(tx, lora)
    step = ts.build_train_step(graphdef, tx)
    rng_before = jax.tree.map(lambda x: np.asarray(jax.random.key_data(x)) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x), rng)
    for i in range(3):
        lora, opt, rng, _ = step(lora, opt, base, rng, ts.stack_micro_batches(_batch(4, seed=i), 2))
    for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(base)):
        assert np.array_equal(a, np.asarray(b))
    changed = [not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(lora_before), jax.tree.leaves(lora))]
    assert all(changed)
    rng_after = jax.tree.map(lambda x: np.asarray(jax.random.key_data(x)) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x), rng)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rng_before), jax.tree.leaves(rng_after)))
