"""Memory planner: compile the LoRA train step ahead of time from shapes only, report per-device bytes.

    python -m bioinstruct_jax.plan --preset llama2-7b --mesh 1,8,1 --batch-size 128 --grad-accum 16 --max-length 512 \\
        --lora-r 16 --targets q_proj,k_proj,v_proj,o_proj --remat --accelerator tpu-v3

builds the model abstractly (`nnx.eval_shape`, no weights), gives every argument of the training
step (frozen base weights, LoRA weights, optimizer state, RNG state, batch) a sharded
`jax.ShapeDtypeStruct`, lowers and compiles `train_step.build_train_step` -- the very function
training runs -- for the mesh on virtual CPU devices, and prints what one device holds: parameters,
LoRA + optimizer state, the batch, and the temporaries XLA's buffer assignment needs
(`compiled.memory_analysis()`), then whether that fits the accelerator.

The batch is laid out as training lays it out: `batch` rows per optimizer step (data.batch_size),
split into `grad_accum` micro-batches (optim.grad_accum) as `[grad_accum, batch / grad_accum, seq]`
arrays that the step scans over, so the temporaries are those of one micro-batch (plus the f32
gradient accumulator), not of the whole batch.

The process re-executes itself with `XLA_FLAGS=--xla_force_host_platform_device_count=N` (and
`JAX_PLATFORMS=cpu`) when it does not already see enough devices.

Where the figures come from. By default, XLA:CPU's buffer assignment for the same SPMD program on
virtual CPU devices: fast (a few minutes for 7B / 13B on 8 devices; docs/PLANNER.md has the wall
times), but an approximation that reads high for bf16 programs -- XLA:CPU converts bf16 weights to
f32 for its dots (before their all-gathers) and schedules collectives its own way. With `--tpu-aot`, a TPU
target whose slice is in `TPU_TOPOLOGIES` (v3-8, v4-8, v5e-8, v5p-8, ...) is compiled ahead of time
*for that TPU* on this CPU machine (libtpu via `jax.experimental.topologies`, no TPU attached, as
MaxText's train_compile does; `pip install -e '.[plan]'`): the TPU compiler's own figures, several
times slower to compile. The report says which compiler answered.

`--config FILE [key=value ...]` reads the run YAML (sections model/lora/mesh/data/optim/train) through
the typed run config, as training does: the same keys, base files and errors. Each flag overrides one
config key (`SETTING_KEYS`: --batch-size is data.batch_size, --max-length data.max_length, ...) and wins over the
file; without --config the planner's own defaults (`PlanSettings`) stand in for the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any, Sequence

import jax
from flax import nnx

from bioinstruct_jax.checkpoint import factory
from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli.arguments import ArgumentParser
from bioinstruct_jax.config import RunConfig, load_run_config
from bioinstruct_jax.config.sections import LoraConfig, ModelConfig, OptimConfig
from bioinstruct_jax.data.batch import BATCH_DTYPES, BATCH_KEYS
from bioinstruct_jax.model.lora import parameter_summary
from bioinstruct_jax.parallel import accelerators
from bioinstruct_jax.parallel import sharding
from bioinstruct_jax.parallel.accelerators import GiB
from bioinstruct_jax.train import step as train_step


def accelerator_bytes(name: str) -> tuple[str, float]:
    """(canonical name, bytes per device) for e.g. 'tpu-v3', 'v4-8', 'a100-80', or '12GiB'."""
    m = re.fullmatch(r"([\d.]+)\s*(gib|gb|g)", name.strip().lower())
    if m:
        return f"{m.group(1)} GiB", float(m.group(1)) * GiB
    canon, accelerator = accelerators.lookup(name)
    return canon, accelerator.memory_bytes


# TPU slices the planner can compile for ahead of time with libtpu (no TPU attached): (chip, JAX
# devices) -> (TPU type, topology, options). v4 and v5p chips are one "megacore" device each, as on a real VM.
TPU_TOPOLOGIES: dict[tuple[str, int], tuple[str, str, dict[str, str]]] = {
    ("tpu-v3", 8): ("v3-8", "v3:2x2", {}), ("tpu-v3", 32): ("v3-32", "v3:4x4", {}),
    ("tpu-v4", 4): ("v4-8", "v4:2x2x1", {"chip_config_name": "megacore"}),
    ("tpu-v4", 8): ("v4-16", "v4:2x2x2", {"chip_config_name": "megacore"}),
    ("tpu-v4", 16): ("v4-32", "v4:2x2x4", {"chip_config_name": "megacore"}),
    ("tpu-v5e", 4): ("v5litepod-4", "v5e:2x2", {}), ("tpu-v5e", 8): ("v5litepod-8", "v5e:2x4", {}),
    ("tpu-v5p", 4): ("v5p-8", "v5p:2x2x1", {}), ("tpu-v5p", 8): ("v5p-16", "v5p:2x2x2", {}),
    ("tpu-v6e", 8): ("v6e-8", "v6e:2x4", {}),
}


def tpu_aot_devices(accelerator: str, num_devices: int) -> tuple[list[Any] | None, str]:
    """(device descriptions of a TPU slice to compile for, why not) — ahead-of-time, no TPU needed.

    Needs libtpu (`pip install -e '.[plan]'`, included in the `tpu` and `test` extras). Returns
    (None, reason) for GPUs, slices not in `TPU_TOPOLOGIES`, or when libtpu is missing.
    """
    if not accelerator.startswith("tpu-"):
        return None, f"{accelerator} is not a TPU"
    entry = TPU_TOPOLOGIES.get((accelerator, num_devices))
    if entry is None:
        known = sorted(n for (a, n) in TPU_TOPOLOGIES if a == accelerator)
        return None, f"no {accelerator} slice with {num_devices} devices in TPU_TOPOLOGIES (known: {known})"
    try:
        import libtpu  # noqa: F401 - optional (the plan extra): probe whether it is installed
    except ImportError:
        return None, "libtpu is not installed (pip install -e '.[plan]')"
    from jax.experimental import topologies  # only with libtpu installed (checked above)

    tpu_type, topology, options = entry
    # Off a TPU VM libtpu would query a metadata server and log errors; say what it is compiling for,
    # and let several planner processes hold libtpu at once (they never touch a real TPU).
    for key, value in {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": tpu_type,
                       "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}.items():
        os.environ.setdefault(key, value)
    devices = list(topologies.get_topology_desc(topology_name=topology, platform="tpu", **options).devices)
    if len(devices) != num_devices:
        return None, f"topology {topology} has {len(devices)} devices, not {num_devices}"
    return devices, ""


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """What to plan: model, adapters, mesh, batch shape and the accelerator to compare against."""

    preset: str = "tiny"
    hf_path: str = ""  # an HF folder or GGUF file whose architecture (config only, no weights) replaces the preset
    mesh: tuple[int, int, int] = (1, 8, 1)
    batch: int = 8  # rows per optimizer step (data.batch_size)
    seq: int = 512
    grad_accum: int = 1  # micro-batches per step (optim.grad_accum): each has batch // grad_accum rows
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    target_regex: str = ""  # when set, replaces targets (lora.target_regex)
    remat: bool = False
    dtype: str = "bfloat16"
    accelerator: str = "tpu-v3"
    tpu_aot: bool = False  # compile for the TPU slice itself (libtpu, ahead of time) instead of XLA:CPU

    @property
    def num_devices(self) -> int:
        d, f, t = self.mesh
        return d * f * t

    @property
    def model_label(self) -> str:
        return self.hf_path or self.preset

    @property
    def adapted(self) -> str:
        return f"/{self.target_regex}/" if self.target_regex else ",".join(self.targets)

    @property
    def micro_batch(self) -> int:
        if self.grad_accum < 1 or self.batch % self.grad_accum:
            raise ValueError(f"batch {self.batch} cannot be split into grad_accum={self.grad_accum} "
                             "equal micro-batches")
        return self.batch // self.grad_accum


@dataclasses.dataclass
class PlanResult:
    """Per-device bytes of one compiled train step and the verdict."""

    settings: PlanSettings
    params_bytes: int
    lora_bytes: int
    optimizer_bytes: int
    batch_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    peak_bytes: int
    capacity_bytes: float
    accelerator: str
    compile_seconds: float
    trainable_params: int
    total_params: int
    step: str = "train_step.build_train_step"
    compiled_for: str = "XLA:CPU"

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.capacity_bytes

    def report(self) -> str:
        s = self.settings
        gib = _fmt_bytes
        lines = [
            f"plan: {s.model_label}  mesh data={s.mesh[0]} fsdp={s.mesh[1]} tensor={s.mesh[2]}  batch={s.batch} "
            f"(grad_accum={s.grad_accum} x micro-batch {s.micro_batch})  seq={s.seq}  lora r={s.lora_r} on "
            f"{s.adapted}  remat={'on' if s.remat else 'off'}  params {s.dtype}",
            f"  parameters  {self.total_params:,} ({self.trainable_params:,} trainable LoRA)",
            "  per device:",
            f"    frozen parameters      {gib(self.params_bytes)}",
            f"    LoRA weights           {gib(self.lora_bytes)}",
            f"    optimizer state        {gib(self.optimizer_bytes)}",
            f"    {f'batch [{s.grad_accum}, {s.micro_batch}, {s.seq}]':<23}{gib(self.batch_bytes)}",
            f"    temporaries            {gib(self.temp_bytes)}  (one micro-batch's activations, gathered "
            "weights, grads + accumulator)",
            f"    peak (args+out-alias+temp) {gib(self.peak_bytes)}",
            f"  {self.accelerator}: {gib(self.capacity_bytes)} per device -> "
            + ("FITS" if self.fits else "DOES NOT FIT")
            + f" ({100 * self.peak_bytes / self.capacity_bytes:.0f}% used)",
            f"  compiled {self.step} for {self.compiled_for} in {self.compile_seconds:.1f}s",
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fits"] = self.fits
        return d


def _fmt_bytes(b: float) -> str:
    return f"{b / GiB:8.2f} GiB" if b >= GiB / 10 else f"{b / 2**20:8.2f} MiB"


def build_abstract_model(settings: PlanSettings):
    """The LoRA-wrapped model with ShapeDtypeStruct leaves (nothing allocated): the model factory's
    `init_model` of the run config these settings describe, under `nnx.eval_shape`. Its dots take the
    accelerator's forms (cpu_dot_forms=False): the step of the target accelerator, not XLA:CPU's."""
    cfg = RunConfig(model=ModelConfig(preset=settings.preset, hf_path=settings.hf_path, param_dtype=settings.dtype,
                                      dtype=settings.dtype, remat=settings.remat),
                    lora=LoraConfig(r=settings.lora_r, alpha=settings.lora_alpha, dropout=settings.lora_dropout,
                                    targets=tuple(settings.targets), target_regex=settings.target_regex))
    config = factory.resolve_llama_config(cfg)  # hf_path's config.json / GGUF metadata, else the preset
    return nnx.eval_shape(lambda: factory.init_model(cfg, config, cpu_dot_forms=False))


def plan(settings: PlanSettings, devices: Sequence[Any] | None = None) -> PlanResult:
    """Compile training's step for `settings` from shapes only and measure per-device memory.

    What is compiled is what `train.train` compiles: the train-mode graphdef of
    `train_step.split_for_modes`, `train_step.make_optimizer` (clip + AdamW with a schedule), the
    shardings of `train_step.step_shardings`, and a [grad_accum, batch / grad_accum, seq] batch.
    """
    accel_name, capacity = accelerator_bytes(settings.accelerator)
    k, micro = settings.grad_accum, settings.micro_batch
    compiled_for = "XLA:CPU (virtual devices; an approximation: XLA:CPU runs bf16 dots in f32 and schedules " \
                   "collectives its own way, so bf16 programs read high)"
    if devices is None and settings.tpu_aot:
        tpu_devices, why_not = tpu_aot_devices(accel_name, settings.num_devices)
        if tpu_devices is not None:
            devices = tpu_devices
            compiled_for = f"{tpu_devices[0].device_kind} x {len(tpu_devices)} (ahead of time with libtpu: the TPU compiler's own figures)"
        else:
            compiled_for += f"; no TPU compile: {why_not}"
    elif accel_name.startswith("tpu-"):
        compiled_for += "; --tpu-aot gives the TPU compiler's own figures"
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < settings.num_devices:
        raise ValueError(f"mesh {settings.mesh} needs {settings.num_devices} devices, only {len(devices)} visible "
                         f"(run as `python -m bioinstruct_jax.plan`, which sets up virtual devices)")
    mesh = sharding.make_mesh(settings.mesh, devices=devices[: settings.num_devices])
    sharding.check_batch((micro, settings.seq), mesh, what="micro-batch [batch/grad_accum, length]")
    model = build_abstract_model(settings)
    sharding.set_constraint(model, sharding.activation_constraint(mesh))
    trainable, total = parameter_summary(model)
    graphdef, _, lora, rng, base = train_step.split_for_modes(model)

    lora_sds = sharding.abstract_sharded_state(lora, mesh)
    rng_sds = sharding.abstract_sharded_state(rng, mesh)
    base_sds = sharding.abstract_sharded_state(base, mesh)
    # The optimizer's state does not depend on lr / schedule values, only on its structure.
    tx = train_step.make_optimizer(OptimConfig(grad_accum=k), total_steps=1000)
    opt_sds = optimizer_state_shapes(tx, lora_sds, mesh)
    sh = train_step.step_shardings(mesh, lora, opt_sds, base, rng)
    batch_sds = {key: jax.ShapeDtypeStruct((k, micro, settings.seq), BATCH_DTYPES[key], sharding=sh.batch)
                 for key in BATCH_KEYS}
    step = train_step.build_train_step(graphdef, tx, shardings=sh)
    start = time.perf_counter()
    compiled = step.lower(lora_sds, opt_sds, base_sds, rng_sds, batch_sds).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    return PlanResult(
        settings=settings,
        params_bytes=sharding.per_device_bytes(base_sds),
        lora_bytes=sharding.per_device_bytes(lora_sds),
        optimizer_bytes=sharding.per_device_bytes(opt_sds),
        batch_bytes=sharding.per_device_bytes(batch_sds),
        argument_bytes=mem.argument_size_in_bytes,
        output_bytes=mem.output_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes,
        peak_bytes=peak,
        capacity_bytes=capacity,
        accelerator=accel_name,
        compile_seconds=seconds,
        trainable_params=trainable,
        total_params=total,
        compiled_for=compiled_for,
    )


def optimizer_state_shapes(tx, lora_sds, mesh):
    """Sharded ShapeDtypeStructs of `tx.init(lora)`: moments shard like their parameter, counters replicate.

    The shardings are the ones XLA propagates through `tx.init` from the parameters' shardings,
    kept or replaced as training keeps them (`train_step.optimizer_leaf_sharding`).
    """
    shapes = jax.eval_shape(tx.init, lora_sds)
    compiled = jax.jit(tx.init, in_shardings=(jax.tree.map(lambda x: x.sharding, lora_sds),)).lower(lora_sds).compile()

    def one(x, s):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=train_step.optimizer_leaf_sharding(s, mesh))

    return jax.tree.map(one, shapes, compiled.output_shardings)


# ----------------------------------------------------------------------------------------------
# Command line


# Each planner flag is an override of one run-config key, so `--config FILE key=value --flag ...` reads
# exactly what training reads (same keys, bases and errors); flags win over the file and overrides.
SETTING_KEYS: dict[str, str] = {
    "preset": "model.preset", "batch": "data.batch_size", "seq": "data.max_length", "grad_accum": "optim.grad_accum",
    "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout", "targets": "lora.targets",
    "remat": "model.remat", "dtype": "model.param_dtype", "accelerator": "train.accelerator",
}
MESH_KEYS = ("mesh.data", "mesh.fsdp", "mesh.tensor")
# train.accelerator values that pick the MFU peak rather than name a chip: the planner's default target then
_NOT_A_CHIP = ("auto", "cpu")


def _override(key: str, value: Any) -> str:
    """`key=value` with the value written as JSON (which YAML reads back as the same value)."""
    return f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"


def plan_defaults() -> list[str]:
    """Overrides that give a plan without --config the planner's own defaults (`PlanSettings`)."""
    d = PlanSettings()
    return ([_override(key, getattr(d, name)) for name, key in SETTING_KEYS.items()]
            + [_override(key, size) for key, size in zip(MESH_KEYS, d.mesh)])


def settings_from_run(run: RunConfig, devices: int, tpu_aot: bool = False) -> PlanSettings:
    """What to plan for a run config: its model, adapters, mesh (a -1 axis takes the rest of `devices`),
    batch layout and target accelerator."""
    sizes = (run.mesh.data, run.mesh.fsdp, run.mesh.tensor)
    # a fully given mesh needs exactly its own device count; `devices` only resolves a -1 axis
    mesh = run.mesh.resolve(devices if -1 in sizes else math.prod(sizes))
    accelerator = run.train.accelerator
    return PlanSettings(
        preset=run.model.preset, hf_path=run.model.hf_path, mesh=mesh, batch=run.data.batch_size,
        seq=run.data.max_length, grad_accum=run.optim.grad_accum, lora_r=run.lora.r, lora_alpha=run.lora.alpha,
        lora_dropout=run.lora.dropout, targets=tuple(run.lora.targets), target_regex=run.lora.target_regex,
        remat=run.model.remat, dtype=run.model.param_dtype,
        accelerator=PlanSettings.accelerator if accelerator.lower() in _NOT_A_CHIP else accelerator, tpu_aot=tpu_aot,
    )


def parse_args(argv: Sequence[str]) -> tuple[PlanSettings, argparse.Namespace]:
    p = ArgumentParser(prog="python -m bioinstruct_jax.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value overrides of the --config file (e.g. data.max_length=1024)")
    p.add_argument("--config", help="run config YAML (sections model/lora/mesh/data/train)")
    p.add_argument("--preset", help="model preset (llama2-7b, llama2-13b, llama1-7b, tiny, ...)")
    p.add_argument("--mesh", help="data,fsdp,tensor sizes, e.g. 1,8,1 (one may be -1 with --devices)")
    p.add_argument("--devices", type=int, default=8, help="device count used to resolve a -1 mesh axis (default 8)")
    p.add_argument("--batch-size", dest="batch", type=int, help="global batch: rows per optimizer step (data.batch_size)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step (optim.grad_accum); batch must divide by it")
    p.add_argument("--max-length", dest="seq", type=int, help="sequence length (data.max_length)")
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--targets", help="comma-separated projections, e.g. q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=None, help="rematerialise each layer")
    p.add_argument("--dtype", help="frozen parameter / compute dtype (bfloat16, float32)")
    p.add_argument("--accelerator", help=f"one of {', '.join(accelerators.ACCELERATORS)} (aliases like v3-8, a100) or e.g. 12GiB")
    p.add_argument("--tpu-aot", action="store_true",
                   help="for a TPU target: compile for that TPU slice ahead of time with libtpu (the TPU "
                        "compiler's own figures; several times slower than the default XLA:CPU estimate)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    cli_errors.add_debug_argument(p)
    p.add_alias("--batch", "--batch-size")  # earlier names, still accepted
    p.add_alias("--seq", "--max-length")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"expected key=value overrides, got {bad}")
    flags = {name: getattr(args, name) for name in SETTING_KEYS if getattr(args, name, None) is not None}
    flags.pop("targets", None)
    if args.targets:
        flags["targets"] = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    implied = []  # a flag that names what to plan replaces the config's other way of naming it
    if args.preset:
        implied.append(_override("model.hf_path", ""))
    if args.targets:
        implied.append(_override("lora.target_regex", ""))
    overrides = [*(plan_defaults() if not args.config else ()), *args.overrides, *implied,
                 *(_override(SETTING_KEYS[name], value) for name, value in flags.items())]
    if args.mesh:
        try:
            sizes = [int(x) for x in args.mesh.split(",")]
        except ValueError:
            p.error(f"--mesh {args.mesh!r}: expected three integers data,fsdp,tensor")
        if len(sizes) != 3:
            p.error(f"--mesh {args.mesh!r}: expected three sizes data,fsdp,tensor")
        overrides += [_override(key, size) for key, size in zip(MESH_KEYS, sizes)]
    run = load_run_config(args.config, overrides)
    return settings_from_run(run, args.devices, args.tpu_aot), args


# XLA:CPU's default "concurrency optimized" scheduler starts independent work (every layer's weight
# all-gather) as early as possible, which says nothing about an accelerator's memory and makes
# rematerialisation look harmful; the plain memory-minimising scheduler is the faithful model.
PLANNER_XLA_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _ensure_virtual_devices(needed: int, argv: Sequence[str]) -> None:
    """Re-exec with enough virtual CPU devices unless this process already has them configured."""
    flags = os.environ.get("XLA_FLAGS", "")
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", flags)
    if (m and int(m.group(1)) >= needed and os.environ.get("JAX_PLATFORMS", "") == "cpu"
            and PLANNER_XLA_FLAGS in flags):
        return
    if os.environ.get("_BIOINSTRUCT_PLAN_CHILD"):
        raise RuntimeError(f"re-executed planner still lacks {needed} virtual CPU devices (XLA_FLAGS={flags!r})")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags).replace(PLANNER_XLA_FLAGS, "").strip()
    env = dict(os.environ, JAX_PLATFORMS="cpu", _BIOINSTRUCT_PLAN_CHILD="1",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={needed} {PLANNER_XLA_FLAGS}".strip())
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bioinstruct_jax.plan", *argv], env)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings, args = parse_args(argv)
    _ensure_virtual_devices(settings.num_devices, argv)
    start = time.perf_counter()
    try:
        result = plan(settings)
    except ValueError as err:  # a batch / mesh that training would refuse too (ShardingError is one)
        return cli_errors.report_or_raise(err)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.report())
        print(f"  total planner time {time.perf_counter() - start:.1f}s")
    return 0

