"""The training loop behind `python -m bioinstruct_jax.train` (the command is train/__main__.py): `run(cfg)`.

`run` calls one named phase after another, each a top-level function that can be called (and
tested) alone; the order makes every user error surface before anything is compiled:
  1. `check_run`: read the config (typos are `ConfigError`s naming the key), check the data files,
     the tokenizer, the model config and the mesh (divisibility errors name axis and sizes); then
     `take_run_lock` holds the run folder;
  2. `open_run`: if `train.output_dir` already has checkpoints, compare their model signature with
     this run's (a different model is a `CheckpointMismatchError`) and pick the step to resume
     from; the data, the number of steps, the batch split; write run_config.yaml;
  3. `build_optimizer`, `init_state`, `build_steps`: the base model from the model factory
     (`checkpoint.factory.build_model`: HF checkpoint streamed onto the mesh, or a preset with
     seeded random weights) with LoRA, split into LoRA / RNG / frozen-base state (see
     `train_step`), the optimizer state, the jitted train and eval steps;
  4. `restore_state` (resume), `open_logs`;
  5. `train_steps`: the jitted step over batches from the data pipeline; `validate` every
     `train.eval_every` steps; async Orbax checkpoints (`save_checkpoint`) every
     `train.save_every` steps and at the end; SIGTERM (TPU preemption) saves at the next step
     boundary and exits 0 (several processes: at a step they all agree on, `preemption.py`);
  6. `finish`: wait for the saves, close the logs, plot, put the trained weights in the model.
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
from bioinstruct_jax.parallel import sharding
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
        return sharding.make_mesh(cfg.mesh, devices=devices)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_data_files(cfg: RunConfig) -> None:
    """Fail fast when a data file named in the config is missing."""
    for name in ("train_file", "val_file", "labels_file"):
        value = getattr(cfg.data, name, "")
        if value and not as_path(value).exists():  # local or gs://
            raise ConfigError(f"data.{name}: {value} does not exist")


def run_data_factory(cfg: RunConfig, tokenizer: Any, mesh: jax.sharding.Mesh | None = None) -> DataFactory:
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
    by_split.batches_per_epoch = inner.batches_per_epoch  # type: ignore[attr-defined]
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
    per_epoch = getattr(data_factory, "batches_per_epoch", None)
    if per_epoch is None:
        raise ConfigError("train.steps=0 asks for train.epochs, but the data pipeline does not report its size; "
                          "set train.steps")
    return max(1, int(cfg.train.epochs * per_epoch()))


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


# ----------------------------------------------------------------------------------------------
# The run, phase by phase (the module docstring has the order; run() at the end calls them)


@dataclasses.dataclass(frozen=True)
class CheckedRun:
    """What the cheap checks settled before anything is compiled or written: the tokenizer, the
    architecture, the signature a checkpoint of this run must match, and the mesh."""

    tokenizer: Any
    model_config: Any  # the architecture config (LlamaConfig)
    signature: dict[str, Any]  # `factory.model_signature`
    mesh: jax.sharding.Mesh


@dataclasses.dataclass(frozen=True)
class RunSetup(CheckedRun):
    """Everything decided before the model is built: the checks above, the held run lock, the
    checkpoint folder and the step to resume from, the data and the number of steps."""

    cfg: RunConfig
    lock: RunLock
    ckpt: RunCheckpointer
    resume_step: int | None
    data_factory: DataFactory
    total: int
    primary: bool  # process 0 alone writes logs (bar, metrics, TensorBoard, PNG, summary)
    verbose: bool

    def say(self, message: str) -> None:
        if self.verbose and self.primary:
            print(message)


@dataclasses.dataclass(frozen=True)
class TrainState:
    """The built model and its split: `lora`, `opt_state` and `rng` change every step, `base` (the
    frozen weights) never; the graph definitions rebuild the train- and eval-mode model."""

    model: Any
    train_graphdef: Any
    eval_graphdef: Any
    lora: Any
    opt_state: Any
    rng: Any
    base: Any


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted train and eval steps, their shardings, the learning-rate schedule and the
    NaN/Inf guard of the updates."""

    train_step: Callable
    eval_step: Callable
    shardings: Any
    schedule: Callable[[int], Any]
    guard: NonFiniteGuard


@dataclasses.dataclass
class RunLogs:
    """Where progress goes: metrics.jsonl / TensorBoard, the bar, and the MFU figures of a window
    of steps (tokens since the last logged step and when that window began)."""

    metrics: metrics_log.MetricsLogger
    bar: Any  # tqdm or None
    flops_per_token: float
    peak_flops: float  # all devices of the mesh together
    window_tokens: int = 0
    window_start: float = 0.0


@dataclasses.dataclass
class Progress:
    """Where the loop stands: the last step done, the last logged train loss, this step's
    validation loss, and whether SIGTERM ended it."""

    step: int
    last_loss: float | None = None
    val_loss: float | None = None
    preempted: bool = False


def check_run(cfg: RunConfig, tokenizer: Any = None) -> CheckedRun:
    """The cheap checks (data files, tokenizer, model config, mesh); nothing compiled or written."""
    check_data_files(cfg)
    if tokenizer is None:
        tokenizer = factory.load_run_tokenizer(cfg)
    model_config = factory.resolve_llama_config(cfg, tokenizer)
    return CheckedRun(tokenizer=tokenizer, model_config=model_config,
                      signature=factory.model_signature(cfg, model_config), mesh=make_run_mesh(cfg))


def open_checkpoints(cfg: RunConfig, signature: dict[str, Any],
                     requested_step: int | None) -> tuple[RunCheckpointer, int | None]:
    """The run's checkpointer and the step to resume from (None: a fresh run); a checkpoint of a
    different model is a `CheckpointMismatchError` here, before anything is compiled."""
    resume_step = pick_resume_step(checkpoint_dir(cfg.train.output_dir), requested_step)  # skips damaged steps
    ckpt = RunCheckpointer(cfg.train.output_dir, keep_last=cfg.train.keep_last, keep_best=cfg.train.keep_best,
                           async_save=cfg.train.async_checkpointing)
    if resume_step is None and requested_step is None:
        resume_step = ckpt.latest_step()  # remote runs (not checked locally)
    if resume_step is not None:
        meta = ckpt.read_meta(resume_step)
        check_compatible(meta.get("model_signature", {}), signature, str(ckpt.directory))
    return ckpt, resume_step


def check_batch_split(cfg: RunConfig, mesh: jax.sharding.Mesh) -> None:
    """The batch splits into optim.grad_accum micro-batches, and each micro-batch over the mesh."""
    k = cfg.optim.grad_accum
    if cfg.data.batch_size % k:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by optim.grad_accum={k}")
    try:
        sharding.check_batch((cfg.data.batch_size // k, cfg.data.max_length), mesh,
                             what="micro-batch [batch/grad_accum, length]")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def open_run(cfg: RunConfig, checked: CheckedRun, lock: RunLock, *, data_factory: DataFactory | None = None,
             resume_step: int | None = None, verbose: bool = True) -> RunSetup:
    """With the run lock held: checkpoints and resume step, data, step count; then
    run_config.yaml is written. Still nothing compiled."""
    primary = is_primary()
    ckpt, resume_step = open_checkpoints(cfg, checked.signature, resume_step)
    if data_factory is None:
        data_factory = run_data_factory(cfg, checked.tokenizer, checked.mesh)
        if primary and verbose:
            note = data_factory.cut_note()  # type: ignore[attr-defined]  # once per run, with counts
            if note:
                print(note, file=sys.stderr)
    total = total_steps_of(cfg, data_factory)
    check_batch_split(cfg, checked.mesh)
    if primary:
        out = as_path(cfg.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.yaml").write_text(dump_yaml(cfg))  # local or gs://
    return RunSetup(**vars(checked), cfg=cfg, lock=lock, ckpt=ckpt, resume_step=resume_step,
                    data_factory=data_factory, total=total, primary=primary, verbose=verbose)


def build_optimizer(setup: RunSetup) -> tuple[Any, Callable[[int], Any]]:
    """The optax transform and its learning-rate schedule over the run's steps."""
    return ts.make_optimizer(setup.cfg.optim, setup.total), ts.make_schedule(setup.cfg.optim, setup.total)


def init_state(setup: RunSetup, tx: Any) -> TrainState:
    """The base model from the model factory (the one `restore_run` uses too) with LoRA,
    split for the step, and a fresh optimizer state sharded like the LoRA weights."""
    model = factory.build_model(setup.cfg, setup.model_config, setup.mesh)
    train_graphdef, eval_graphdef, lora, rng, base = ts.split_for_modes(model)
    opt_state = ts.init_optimizer(tx, lora, sharding.state_shardings(lora, setup.mesh))
    return TrainState(model=model, train_graphdef=train_graphdef, eval_graphdef=eval_graphdef, lora=lora,
                      opt_state=opt_state, rng=rng, base=base)


def build_steps(setup: RunSetup, state: TrainState, tx: Any, schedule: Callable[[int], Any]) -> Steps:
    """The jitted train and eval steps for the state's shapes and shardings."""
    shardings = ts.step_shardings(setup.mesh, state.lora, state.opt_state, state.base, state.rng)
    skip = setup.cfg.train.skip_nonfinite_batches
    train_step = ts.build_train_step(state.train_graphdef, tx, shardings=shardings, skip_nonfinite=skip > 0)
    guard = NonFiniteGuard(skip)
    eval_step = ts.build_eval_step(state.eval_graphdef, shardings=shardings)
    return Steps(train_step=train_step, eval_step=eval_step, shardings=shardings, schedule=schedule, guard=guard)


def describe(setup: RunSetup, state: TrainState) -> str:
    """The one line a run prints about its model, mesh and length."""
    trainable, n_all = parameter_summary(state.model)
    return (f"model: {setup.signature['base']}  {n_all:,} parameters, {trainable:,} trainable LoRA "
            f"({100 * trainable / max(n_all, 1):.3f}%)  mesh {dict(setup.mesh.shape)}  steps {setup.total}")


def restore_state(setup: RunSetup, state: TrainState, train_iter: Any) -> tuple[TrainState, int]:
    """With a resume step, the LoRA weights, optimizer state, RNG and this process's data
    position of that checkpoint; returns the state and the step to continue from (0: fresh)."""
    if setup.resume_step is None:
        return state, 0
    ckpt = setup.ckpt
    restored = ckpt.restore(setup.resume_step, lora=state.lora, opt_state=state.opt_state, rng=state.rng)
    lora, opt_state, rng = restored["lora"], restored["opt"], restored["rng"]
    data_state = ckpt.restore_data_state(setup.resume_step, restored["meta"])  # this process's own
    if data_state is not None:
        train_iter.set_state(data_state)
    start = int(restored["meta"]["step"])
    setup.say(f"resumed from {ckpt.directory}/{setup.resume_step} (step {start} of {setup.total})")
    return dataclasses.replace(state, lora=lora, opt_state=opt_state, rng=rng), start


def open_logs(setup: RunSetup, state: TrainState, start: int) -> RunLogs:
    """The metrics log (records after `start` are dropped: those steps are replayed),
    the progress bar, and the FLOPs figures of MFU."""
    cfg = setup.cfg
    logger = metrics_log.MetricsLogger(cfg.train.output_dir, tensorboard=cfg.train.tensorboard,
                                       enabled=setup.primary, resume_step=start)
    _, peak = metrics_log.peak_flops_per_device(cfg.train.accelerator)
    n_frozen_mm, n_lora = metrics_log.matmul_param_counts(state.model)
    flops_tok = metrics_log.flops_per_token(setup.model_config, n_frozen_mm, n_lora, cfg.data.max_length)
    bar = None
    if cfg.train.progress_bar and setup.verbose and setup.primary:
        bar = tqdm(total=setup.total, initial=start, desc="train", dynamic_ncols=True)
    return RunLogs(metrics=logger, bar=bar, flops_per_token=flops_tok,
                   peak_flops=peak * setup.mesh.devices.size)


def to_global_batch(cfg: RunConfig, batch: dict[str, Any], batch_sharding: Any, stacked: bool) -> dict[str, Any]:
    """This host's rows -> the global batch; `stacked`: split into optim.grad_accum micro-batches first."""
    k = cfg.optim.grad_accum
    arrays = ts.stack_micro_batches(batch, k) if stacked else {key: batch[key] for key in ts.BATCH_KEYS}
    rows = cfg.data.batch_size // k if stacked else cfg.data.batch_size
    return global_batch(arrays, batch_sharding, rows_axis=1 if stacked else 0, global_rows=rows)


def validate(setup: RunSetup, steps: Steps, state: TrainState) -> float | None:
    """The mean validation loss per response token (train.eval_batches batches at most; None with
    no tokens); processes that run out of rows feed padding so that all stay in lockstep."""
    cfg = setup.cfg
    total_loss, total_tokens = 0.0, 0.0
    n_rows = len(host_batch_rows(setup.mesh, cfg.data.batch_size, cfg.optim.grad_accum))
    padding = lambda: padding_batch(n_rows, cfg.data.max_length)  # noqa: E731  (a host that ran out)
    for i, batch in enumerate(in_lockstep(setup.data_factory("val"), padding)):
        if cfg.train.eval_batches and i >= cfg.train.eval_batches:
            break
        s, n = steps.eval_step(state.lora, state.base, state.rng,
                               to_global_batch(cfg, batch, steps.shardings.eval_batch, False))
        total_loss, total_tokens = total_loss + float(s), total_tokens + float(n)
    return total_loss / total_tokens if total_tokens else None


def save_checkpoint(setup: RunSetup, steps: Steps, state: TrainState, train_iter: Any, logs: RunLogs,
                    step: int, val_loss: float | None) -> None:
    """Save `step` (never a NaN/Inf state) with this process's data position; refresh the lock's
    lease, and sync the metrics so that a gs:// run's bucket holds those of every saved step."""
    steps.guard.check()
    setup.lock.refresh()
    meta = {"config": to_dict(setup.cfg), "model_signature": setup.signature, "total_steps": setup.total}
    setup.ckpt.save(step, lora=state.lora, opt_state=state.opt_state, rng=state.rng, meta=meta,
                    val_loss=val_loss, data_state=train_iter.get_state())
    logs.metrics.sync()


def log_train_step(setup: RunSetup, steps: Steps, logs: RunLogs, step: int, metrics: dict[str, Any]) -> float:
    """Log the step's loss, gradient norm, learning rate, tokens/s and MFU (one device_get, which
    also checks for NaN/Inf); start a new throughput window. Returns the loss."""
    m = steps.guard.fetch(metrics)
    tok_s = logs.window_tokens / max(time.perf_counter() - logs.window_start, 1e-9)
    mfu = logs.flops_per_token * tok_s / logs.peak_flops
    loss = float(m["loss"])
    record = {"loss": loss, "grad_norm": float(m["grad_norm"]), "lr": float(steps.schedule(step - 1)),
              "tokens": float(m["tokens"]), "tokens_per_s": tok_s, "mfu": mfu}
    logs.metrics.log(step, record)
    setup.lock.refresh()
    if logs.bar is not None:
        logs.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{tok_s:,.0f}",
                             mfu=f"{100 * mfu:.1f}%")
    logs.window_tokens, logs.window_start = 0, time.perf_counter()
    return loss


def validate_and_log(setup: RunSetup, steps: Steps, state: TrainState, logs: RunLogs, step: int) -> float | None:
    """Run `validate` and log its loss under split "val"."""
    val_loss = validate(setup, steps, state)
    if val_loss is not None:
        logs.metrics.log(step, {"loss": val_loss}, split="val")
        if logs.bar is not None:
            logs.bar.write(f"step {step}: validation loss {val_loss:.4f}")
    return val_loss


def _due(every: int, step: int, total: int) -> bool:
    return bool(every) and (step % every == 0 or step == total)


def train_steps(setup: RunSetup, steps: Steps, state: TrainState, train_iter: Any, logs: RunLogs, start: int,
                stop_after: int | None = None) -> tuple[TrainState, Progress]:
    """Step from `start` to the last step, logging, validating and saving on schedule; a
    SIGTERM saves at the next step boundary and ends the loop; `stop_after` ends it after that many
    steps without a save (tests of resumption)."""
    cfg, total, progress = setup.cfg, setup.total, Progress(step=start)
    logs.window_tokens, logs.window_start = 0, time.perf_counter()
    with PreemptionWatch(setup.ckpt.reached_preemption) as preemption, _finish_saves_on_error(setup.ckpt, logs.metrics):
        while progress.step < total:
            try:
                batch = next(train_iter)
            except ValueError as err:  # e.g. no record fits data.max_length
                raise ConfigError(str(err)) from None
            lora, opt_state, rng, metrics = steps.train_step(state.lora, state.opt_state, state.base, state.rng,
                                                             to_global_batch(cfg, batch, steps.shardings.batch, True))
            state = dataclasses.replace(state, lora=lora, opt_state=opt_state, rng=rng)
            progress.step = step = progress.step + 1
            steps.guard.update(step, metrics)
            logs.window_tokens += cfg.data.batch_size * cfg.data.max_length  # the global batch, all hosts
            progress.val_loss = None
            if _due(cfg.train.log_every, step, total):
                progress.last_loss = log_train_step(setup, steps, logs, step, metrics)
            if _due(cfg.train.eval_every, step, total):
                progress.val_loss = validate_and_log(setup, steps, state, logs, step)
            if logs.bar is not None:
                logs.bar.update(1)
            if preemption.reached(step):
                save_checkpoint(setup, steps, state, train_iter, logs, step, progress.val_loss)
                progress.preempted = True
                setup.say(f"\nSIGTERM: saved step {step} to {setup.ckpt.directory}; exiting")
                break
            if stop_after is not None and step - start >= stop_after:
                break
            if step == total or (cfg.train.save_every and step % cfg.train.save_every == 0):
                save_checkpoint(setup, steps, state, train_iter, logs, step, progress.val_loss)
    return state, progress


def finish(setup: RunSetup, state: TrainState, logs: RunLogs, progress: Progress) -> RunResult:
    """Wait for the last saves, close the logs, draw the loss curve (train.plot), and put
    the trained LoRA weights back into the model."""
    if logs.bar is not None:
        logs.bar.close()
    setup.ckpt.close()
    logs.metrics.close()
    curve = logs.metrics.write_loss_curve() if setup.primary and setup.cfg.train.plot else None
    nnx.update(state.model, state.lora, state.rng)
    return RunResult(step=progress.step, total_steps=setup.total, preempted=progress.preempted,
                     final_loss=progress.last_loss, val_loss=progress.val_loss, output_dir=setup.cfg.train.output_dir,
                     checkpoint_dir=str(setup.ckpt.directory), metrics_path=logs.metrics.jsonl_path,
                     loss_curve=curve, model=state.model)


def run(cfg: RunConfig, *, tokenizer: Any = None, data_factory: DataFactory | None = None,
        stop_after: int | None = None, verbose: bool = True, resume_step: int | None = None) -> RunResult:
    """Train (or resume) the run described by `cfg`; returns at the last step or on SIGTERM.

    tokenizer / data_factory: injected in tests; default from the config. stop_after: end this
    process after that many steps (without the final save), for tests of resumption. resume_step:
    resume from that checkpoint step (default: the newest intact one; see
    `checkpoint.integrity.pick_resume_step` for damaged steps). The run holds its folder's lock
    (`take_run_lock`) from before it writes anything until it returns or fails.
    """
    checked = check_run(cfg, tokenizer)
    lock = take_run_lock(cfg)  # before anything in the folder is written or moved aside
    try:
        setup = open_run(cfg, checked, lock, data_factory=data_factory, resume_step=resume_step, verbose=verbose)
        tx, schedule = build_optimizer(setup)
        state = init_state(setup, tx)
        steps = build_steps(setup, state, tx, schedule)
        setup.say(describe(setup, state))
        train_iter = setup.data_factory("train")
        state, start = restore_state(setup, state, train_iter)
        logs = open_logs(setup, state, start)
        state, progress = train_steps(setup, steps, state, train_iter, logs, start, stop_after)
        return finish(setup, state, logs, progress)
    finally:
        lock.release()
