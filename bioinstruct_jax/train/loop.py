"""The training loop behind `python -m bioinstruct_jax.train` (the command is train/__main__.py): `run(cfg)`.

Order of work, so that every user error surfaces before anything is compiled:
  1. read the config (typos are `ConfigError`s naming the key), check the data files and the model
     path exist, build the mesh (divisibility errors name axis and sizes);
  2. if `train.output_dir` already has checkpoints, compare their model signature with this run's
     (a different model is a `CheckpointMismatchError`) and resume from the latest one;
  3. build the base model with the model factory (`checkpoint.factory.build_model`: HF checkpoint
     streamed onto the mesh, or a preset with seeded random weights), add LoRA, split it into LoRA / RNG / frozen-base state (see `train_step`);
  4. run the jitted step over batches from the data pipeline; validation loss every
     `train.eval_every` steps; async Orbax checkpoints every `train.save_every` steps and at the
     end; SIGTERM (TPU preemption) saves at the next step boundary and exits 0 (several processes:
     at a step they all agree on, `preemption.py`).
Logs: a tqdm bar (step, loss, lr, tokens/s, ETA), `metrics.jsonl`, TensorBoard events, MFU, and a
`loss_curve.png` at the end, all under `train.output_dir` (a local folder or gs://), written by
process 0 only.
Several processes (one per host): each loads its rows of every global batch and `distributed`
assembles the global arrays; checkpoints hold each process's data-iterator state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from typing import Any, Callable, Sequence

import jax
from flax import nnx
from tqdm import tqdm

from bioinstruct_jax.checkpoint import factory
from bioinstruct_jax.checkpoint.integrity import pick_resume_step
from bioinstruct_jax.checkpoint.orbax import RunCheckpointer, check_compatible, checkpoint_dir
from bioinstruct_jax.checkpoint.run_lock import RunLock, RunLockedError
from bioinstruct_jax.config import ConfigError, RunConfig, dump_yaml, to_dict
from bioinstruct_jax.config.storage import as_path
from bioinstruct_jax.data import pipeline
from bioinstruct_jax.data.pipeline import padding_batch
from bioinstruct_jax.model.lora import parameter_summary
from bioinstruct_jax.parallel import sharding as parallel
from bioinstruct_jax.parallel.distributed import any_process, global_batch, host_batch_rows, in_lockstep, is_primary
from bioinstruct_jax.train import metrics as metrics_log
from bioinstruct_jax.train import step as ts
from bioinstruct_jax.train.nonfinite import NonFiniteGuard
from bioinstruct_jax.train.preemption import PreemptionWatch

DataFactory = Callable[[str], Any]  # split ("train" | "val") -> iterator of numpy batches


# ----------------------------------------------------------------------------------------------
# Mesh and data


def make_run_mesh(cfg: RunConfig, devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    """The mesh of mesh.*; fully fixed sizes use the first data*fsdp*tensor devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    if -1 not in sizes and 0 < math.prod(sizes) < len(devices):
        devices = devices[: math.prod(sizes)]
    try:
        return parallel.make_mesh(cfg.mesh, devices=devices)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_data_files(cfg: RunConfig) -> None:
    """Fail fast when a data file named in the config is missing."""
    for name in ("train_file", "val_file", "labels_file"):
        value = getattr(cfg.data, name, "")
        if value and not as_path(value).exists():  # local or gs://
            raise ConfigError(f"data.{name}: {value} does not exist")


def make_data_factory(cfg: RunConfig, tokenizer: Any, mesh: jax.sharding.Mesh | None = None) -> DataFactory:
    """split -> this host's batch iterator (the grain pipeline of `data/pipeline.py`), with
    `num_examples` for epoch-based step counts; data errors become `ConfigError`s. With `mesh`,
    each process loads the rows of the global batch its devices hold (`distributed.host_batch_rows`)."""
    if tokenizer is None:
        raise ConfigError("model.tokenizer is not set and model.hf_path has no tokenizer: the data needs one")
    try:
        rows = None if mesh is None else host_batch_rows(mesh, cfg.data.batch_size, cfg.optim.grad_accum)
        inner = pipeline.make_data_factory(cfg.data, tokenizer, host_rows=rows)
    except ValueError as err:  # malformed record (file:line), empty split, bad batch split
        raise ConfigError(f"data: {err}") from None

    def by_split(split: str):
        try:
            return inner(split)
        except ValueError as err:
            raise ConfigError(f"data ({split}): {err}") from None

    by_split.num_examples = inner.num_examples  # type: ignore[attr-defined]
    by_split.cut_note = inner.cut_note  # type: ignore[attr-defined]
    return by_split


# ----------------------------------------------------------------------------------------------
# The loop


@contextlib.contextmanager
def _finish_saves_on_error(ckpt: Any, logger: Any):
    """When the loop fails (NaN/Inf, bad data, a full disk), still commit the checkpoints already
    being saved and close the logs, then re-raise the original error."""
    try:
        yield
    except BaseException:
        for close in (ckpt.close, logger.close):
            try:
                close()
            except Exception:  # noqa: BLE001 - the loop's own error is the one to report
                pass
        raise


@dataclasses.dataclass
class RunResult:
    """What a finished (or preempted) run produced."""

    step: int
    total_steps: int
    preempted: bool
    final_loss: float | None
    val_loss: float | None
    output_dir: str
    checkpoint_dir: str
    metrics_path: str
    loss_curve: str | None
    model: Any = None


def total_steps_of(cfg: RunConfig, data_factory: DataFactory) -> int:
    if cfg.train.steps:
        return cfg.train.steps
    n = getattr(data_factory, "num_examples", None)
    if not n:
        raise ConfigError("train.steps=0 asks for train.epochs, but the data pipeline does not report its size; "
                          "set train.steps")
    return max(1, int(cfg.train.epochs * n // cfg.data.batch_size))


def take_run_lock(cfg: RunConfig) -> RunLock:
    """The run folder's lock (`checkpoint/run_lock.py`), held by process 0; every process raises
    `RunLockedError` when process 0 could not take it (a collective with several processes)."""
    lock = RunLock(cfg.train.output_dir, lease_s=cfg.train.lock_lease_s, primary=is_primary())
    refused = None
    try:
        lock.acquire()
    except RunLockedError as err:
        refused = err
    if any_process(refused is not None) and refused is None:
        raise RunLockedError(f"{cfg.train.output_dir}: process 0 could not take the run lock "
                             f"(another run holds it; process 0's error names that run)")
    if refused is not None:
        raise refused
    return lock


def run(cfg: RunConfig, *, tokenizer: Any = None, data_factory: DataFactory | None = None,
        stop_after: int | None = None, verbose: bool = True, resume_step: int | None = None) -> RunResult:
    """Train (or resume) the run described by `cfg`; returns at the last step or on SIGTERM.

    tokenizer / data_factory: injected in tests; default from the config. stop_after: end this
    process after that many steps (without the final save), for tests of resumption. resume_step:
    resume from that checkpoint step (default: the newest intact one; see
    `checkpoint.integrity.pick_resume_step` for damaged steps). The run holds its folder's lock
    (`take_run_lock`) from before it writes anything until it returns or fails.
    """
    locks: list[RunLock] = []
    try:
        return _run(cfg, locks=locks, tokenizer=tokenizer, data_factory=data_factory, stop_after=stop_after,
                    verbose=verbose, resume_step=resume_step)
    finally:
        for lock in locks:
            lock.release()


def _run(cfg: RunConfig, *, locks: list[RunLock], tokenizer: Any = None, data_factory: DataFactory | None = None,
         stop_after: int | None = None, verbose: bool = True, resume_step: int | None = None) -> RunResult:
    out = cfg.train.output_dir
    primary = is_primary()  # process 0 alone writes logs (bar, metrics, TensorBoard, PNG, summary)
    say = print if verbose and primary else (lambda *a, **k: None)
    # 1. cheap checks, no compilation
    check_data_files(cfg)
    if tokenizer is None:
        tokenizer = factory.load_run_tokenizer(cfg)
    llama_config = factory.resolve_llama_config(cfg, tokenizer)
    signature = factory.model_signature(cfg, llama_config)
    mesh = make_run_mesh(cfg)
    lock = take_run_lock(cfg)  # before anything in the folder is written or moved aside
    locks.append(lock)
    requested_step = resume_step
    resume_step = pick_resume_step(checkpoint_dir(out), requested_step)  # skips damaged steps
    ckpt = RunCheckpointer(out, keep_last=cfg.train.keep_last, keep_best=cfg.train.keep_best,
                           async_save=cfg.train.async_checkpointing)
    if resume_step is None and requested_step is None:
        resume_step = ckpt.latest_step()  # remote runs (not checked locally)
    meta = None
    if resume_step is not None:
        meta = ckpt.read_meta(resume_step)
        check_compatible(meta.get("model_signature", {}), signature, str(ckpt.directory))
    if data_factory is None:
        data_factory = make_data_factory(cfg, tokenizer, mesh)
        if primary and verbose:
            note = data_factory.cut_note()  # type: ignore[attr-defined]  # once per run, with counts
            if note:
                print(note, file=sys.stderr)
    total = total_steps_of(cfg, data_factory)
    k = cfg.optim.grad_accum
    if cfg.data.batch_size % k:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by optim.grad_accum={k}")
    try:
        parallel.check_batch((cfg.data.batch_size // k, cfg.data.max_length), mesh, what="micro-batch [batch/grad_accum, length]")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if primary:
        as_path(out).mkdir(parents=True, exist_ok=True)
        (as_path(out) / "run_config.yaml").write_text(dump_yaml(cfg))  # local or gs://

    # 2. model (the factory restore_run uses too), optimizer, steps
    model = factory.build_model(cfg, llama_config, mesh)
    trainable, n_all = parameter_summary(model)
    n_frozen_mm, n_lora = metrics_log.matmul_param_counts(model)
    train_graphdef, eval_graphdef, lora, rng, base = ts.split_for_modes(model)
    tx = ts.make_optimizer(cfg.optim, total)
    schedule = ts.make_schedule(cfg.optim, total)
    lora_sh = parallel.state_shardings(lora, mesh)
    opt_state = ts.init_optimizer(tx, lora, lora_sh)
    shardings = ts.step_shardings(mesh, lora, opt_state, base, rng)
    train_step = ts.build_train_step(train_graphdef, tx, shardings=shardings,
                                     skip_nonfinite=cfg.train.skip_nonfinite_batches > 0)
    guard = NonFiniteGuard(cfg.train.skip_nonfinite_batches)
    eval_step = ts.build_eval_step(eval_graphdef, shardings=shardings)
    say(f"model: {signature['base']}  {n_all:,} parameters, {trainable:,} trainable LoRA "
        f"({100 * trainable / max(n_all, 1):.3f}%)  mesh {dict(mesh.shape)}  steps {total}")

    train_iter = data_factory("train")
    start = 0
    if resume_step is not None:
        restored = ckpt.restore(resume_step, lora=lora, opt_state=opt_state, rng=rng)
        lora, opt_state, rng = restored["lora"], restored["opt"], restored["rng"]
        data_state = ckpt.restore_data_state(resume_step, restored["meta"])  # this process's own
        if data_state is not None:
            train_iter.set_state(data_state)
        start = int(restored["meta"]["step"])
        say(f"resumed from {ckpt.directory}/{resume_step} (step {start} of {total})")

    logger = metrics_log.MetricsLogger(out, tensorboard=cfg.train.tensorboard, enabled=primary,
                                       resume_step=start)  # drops records of steps about to be replayed
    peak_name, peak = metrics_log.peak_flops_per_device(cfg.train.accelerator)
    flops_tok = metrics_log.flops_per_token(llama_config, n_frozen_mm, n_lora, cfg.data.max_length)
    n_devices = mesh.devices.size
    config_dict = to_dict(cfg)

    def put(batch, sharding, stacked):  # this host's rows -> the global batch
        arrays = ts.stack_micro_batches(batch, k) if stacked else {key: batch[key] for key in ts.BATCH_KEYS}
        rows = cfg.data.batch_size // k if stacked else cfg.data.batch_size
        return global_batch(arrays, sharding, rows_axis=1 if stacked else 0, global_rows=rows)

    def validate() -> float | None:
        total_loss, total_tokens = 0.0, 0.0
        n_rows = len(host_batch_rows(mesh, cfg.data.batch_size, k))
        padding = lambda: padding_batch(n_rows, cfg.data.max_length)  # noqa: E731  (a host that ran out)
        for i, batch in enumerate(in_lockstep(data_factory("val"), padding)):
            if cfg.train.eval_batches and i >= cfg.train.eval_batches:
                break
            s, n = eval_step(lora, base, rng, put(batch, shardings.eval_batch, False))
            total_loss, total_tokens = total_loss + float(s), total_tokens + float(n)
        return total_loss / total_tokens if total_tokens else None

    def save(step: int, val_loss: float | None) -> None:
        guard.check()  # never save a NaN/Inf state
        lock.refresh()
        meta = {"config": config_dict, "model_signature": signature, "total_steps": total}
        ckpt.save(step, lora=lora, opt_state=opt_state, rng=rng, meta=meta, val_loss=val_loss,
                  data_state=train_iter.get_state())
        logger.sync()  # a gs:// run's bucket then holds the metrics of every saved step

    bar = None
    if cfg.train.progress_bar and verbose and primary:
        bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
    step, last_loss, val_loss, preempted = start, None, None, False
    window_tokens, window_start = 0, time.perf_counter()
    with PreemptionWatch(ckpt.reached_preemption) as preemption, _finish_saves_on_error(ckpt, logger):
        while step < total:
            try:
                batch = next(train_iter)
            except ValueError as err:  # e.g. no record fits data.max_length
                raise ConfigError(str(err)) from None
            lora, opt_state, rng, metrics = train_step(lora, opt_state, base, rng, put(batch, shardings.batch, True))
            step += 1
            guard.update(step, metrics)
            window_tokens += cfg.data.batch_size * cfg.data.max_length  # the global batch, all hosts
            val_loss = None
            if cfg.train.log_every and (step % cfg.train.log_every == 0 or step == total):
                m = guard.fetch(metrics)  # the same device_get, and the NaN/Inf check
                elapsed = time.perf_counter() - window_start
                tok_s = window_tokens / max(elapsed, 1e-9)
                mfu = flops_tok * tok_s / (peak * n_devices)
                last_loss = float(m["loss"])
                record = {"loss": last_loss, "grad_norm": float(m["grad_norm"]), "lr": float(schedule(step - 1)),
                          "tokens": float(m["tokens"]), "tokens_per_s": tok_s, "mfu": mfu}
                logger.log(step, record)
                lock.refresh()
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{tok_s:,.0f}",
                                    mfu=f"{100 * mfu:.1f}%")
                window_tokens, window_start = 0, time.perf_counter()
            if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == total):
                val_loss = validate()
                if val_loss is not None:
                    logger.log(step, {"loss": val_loss}, split="val")
                    if bar is not None:
                        bar.write(f"step {step}: validation loss {val_loss:.4f}")
            if bar is not None:
                bar.update(1)
            if preemption.reached(step):
                save(step, val_loss)
                preempted = True
                say(f"\nSIGTERM: saved step {step} to {ckpt.directory}; exiting")
                break
            if stop_after is not None and step - start >= stop_after:
                break
            if step == total or (cfg.train.save_every and step % cfg.train.save_every == 0):
                save(step, val_loss)
    if bar is not None:
        bar.close()
    ckpt.close()
    logger.close()
    curve = logger.write_loss_curve() if primary and cfg.train.plot else None
    nnx.update(model, lora, rng)
    return RunResult(step=step, total_steps=total, preempted=preempted, final_loss=last_loss, val_loss=val_loss,
                     output_dir=out, checkpoint_dir=str(ckpt.directory), metrics_path=logger.jsonl_path,
                     loss_curve=curve, model=model)
