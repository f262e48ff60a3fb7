"""Launch `python -m bioinstruct_jax.train` as N processes x D CPU devices on 127.0.0.1 (gloo).

Shared by the multi-process CLI tests: a small synthetic task with a word-level `tokenizer.json`
(the `tokenizers` library), the per-process environment of a multi-host launch, and helpers that
wait for a finished checkpoint and read LoRA weights and losses back.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_data(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """train.jsonl / val.jsonl of the synthetic task and a WordLevel tokenizer.json covering it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    sys.path.insert(0, str(REPO / "tests"))
    from train_helpers import write_task

    train, val, words = write_task(directory, n_train=120, n_val=20)
    tok = Tokenizer(models.WordLevel(vocab={p: i for i, p in enumerate(words.pieces)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    return {"train": train, "val": val, "tokenizer": directory / "tokenizer.json"}


def overrides(data: dict[str, pathlib.Path], out: pathlib.Path, **extra) -> list[str]:
    """A small f32 run: batch 8 as 2 micro-batches, LoRA dropout on (the RNG state matters)."""
    base = {
        "model.tokenizer": data["tokenizer"], "data.train_file": data["train"], "data.val_file": data["val"],
        "data.batch_size": 8, "data.max_length": 48, "optim.grad_accum": 2, "optim.lr": 0.01,
        "optim.warmup_steps": 2, "lora.dropout": 0.1, "mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1,
        "train.output_dir": out, "train.steps": 12, "train.log_every": 1, "train.eval_every": 6,
        "train.eval_batches": 2, "train.save_every": 2, "train.keep_last": 20, "train.keep_best": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], logs: pathlib.Path, *, processes: int, devices: int) -> list[subprocess.Popen]:
    """Start the training CLI as `processes` processes with `devices` CPU devices each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "TPU_", "SLURM_", "MEGASCALE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES=str(processes),
                   JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid in range(processes):
        log = open(logs / f"process_{pid}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "bioinstruct_jax.train", *args], cwd=REPO,
                                      env=dict(env, JAX_PROCESS_ID=str(pid)), stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def output(logs: pathlib.Path, pid: int) -> str:
    return (logs / f"process_{pid}.log").read_text()


def wait(procs: list[subprocess.Popen], logs: pathlib.Path, timeout: float = 300) -> None:
    """Wait for every process; on a timeout kill them all and say so with their logs."""
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"not finished in {timeout}s:\n" + "\n".join(
                output(logs, i)[-3000:] for i in range(len(procs))))


def wait_for_checkpoint(out: pathlib.Path, step: int, procs: list[subprocess.Popen], logs: pathlib.Path,
                        timeout: float = 300) -> None:
    """Poll until `<out>/checkpoints/<step>` exists (Orbax renames a step directory only when complete)."""
    target = out / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not target.is_dir():
        for i, p in enumerate(procs):
            assert p.poll() is None, f"process {i} ended before checkpoint {step}:\n{output(logs, i)[-3000:]}"
        assert time.time() < deadline, f"no {target} after {timeout}s"
        time.sleep(0.02)


def final_lora(out: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """The LoRA arrays of a checkpoint, read on this one process as host numpy arrays."""
    import jax
    import orbax.checkpoint as ocp

    from bioinstruct_jax.checkpoint.orbax import RunCheckpointer

    ckpt = RunCheckpointer(str(out), read_only=True)
    meta = ocp.StandardCheckpointer().metadata(ckpt.directory / str(step) / "lora").item_metadata.tree
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(target)))
    ckpt.close()
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(restored.lora)}


def losses(out: pathlib.Path) -> dict[tuple[str, int], float]:
    from bioinstruct_jax.train.metrics import read_metrics

    return {(r["split"], r["step"]): r["loss"] for r in read_metrics(out / "metrics.jsonl")}
