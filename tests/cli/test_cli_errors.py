"""Bad inputs to the CLIs: one `error:` line naming the file or tensor, exit code 2, no traceback
(unless --debug / BIOINSTRUCT_DEBUG=1). Real subprocesses; the read-only and full disks are tiny
tmpfs mounts in a private user + mount namespace (`unshare -Urm`), skipped where that is not allowed.

The cases are the rows of docs/ERRORS.md, "Checkpoints, models and training".
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != "BIOINSTRUCT_DEBUG"},
       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


UNSHARE = _unshare_works()
needs_unshare = pytest.mark.skipif(not UNSHARE, reason="needs `unshare -Urm` (user + mount namespaces) "
                                                       "to mount a small tmpfs without privileges")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny HF model (vocab 512), a SentencePiece tokenizer of 300 pieces, and task data."""
    from hf_fixtures import write_tiny_llama
    from bioinstruct_jax.data.tokenizer import train_sentencepiece
    from train_helpers import write_task

    root = tmp_path_factory.mktemp("cli")
    write_tiny_llama(root / "hf", vocab_size=512)
    train_file, val_file, _ = write_task(root / "data", 64, 16)
    texts = [line for f in (train_file, val_file) for line in f.read_text().splitlines()]
    sp = train_sentencepiece(texts, 300, root / "tok")
    return {"root": root, "hf": root / "hf", "sp": sp, "train": train_file, "val": val_file}


def _train_args(a, out, **extra) -> list[str]:
    from train_helpers import tiny_overrides

    return ["-m", "bioinstruct_jax.train", *tiny_overrides(out, a["train"], a["val"], **{
        "model.tokenizer": a["sp"], "train.steps": 2, "train.save_every": 2, "train.async_checkpointing": False,
        **extra})]


def _copy_hf(a, tmp_path) -> pathlib.Path:
    d = tmp_path / "model"
    shutil.copytree(a["hf"], d)
    return d


def _run(args: list[str], *, mount: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python ARGS`, inside a private tmpfs mount at `mount` ("DIR:OPTIONS") when given."""
    cmd = [sys.executable, *map(str, args)]
    if mount:
        where, options = mount.split(":", 1)
        script = f"mount -t tmpfs -o {options} tmpfs {shlex.quote(where)} && exec {shlex.join(cmd)}"
        cmd = ["unshare", "-Urm", "sh", "-c", script]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=600)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


# ----------------------------------------------------------------------------------------------
# Models


def test_truncated_safetensors_in_generate_and_train(assets, tmp_path):
    model = _copy_hf(assets, tmp_path)
    st = model / "model.safetensors"
    os.truncate(st, st.stat().st_size // 2)
    line = _one_line_error(_run(["-m", "bioinstruct_jax.generate", "--model", model, "--prompt", "hi"]))
    assert str(st) in line and "truncated" in line
    line = _one_line_error(_run(_train_args(assets, tmp_path / "run", **{"model.hf_path": model,
                                                                        "model.preset": "tiny"})))
    assert str(st) in line and "truncated" in line


def test_config_missing_hidden_size(assets, tmp_path):
    model = _copy_hf(assets, tmp_path)
    cfg = json.loads((model / "config.json").read_text())
    del cfg["hidden_size"]
    (model / "config.json").write_text(json.dumps(cfg))
    line = _one_line_error(_run(["-m", "bioinstruct_jax.generate", "--model", model, "--prompt", "hi"]))
    assert str(model / "config.json") in line and "'hidden_size'" in line


def test_shape_mismatch_names_the_tensor_and_shapes(assets, tmp_path):
    model = _copy_hf(assets, tmp_path)
    cfg = json.loads((model / "config.json").read_text())
    cfg["intermediate_size"] = 128  # the stored MLP weights are 112 wide
    (model / "config.json").write_text(json.dumps(cfg))
    line = _one_line_error(_run(["-m", "bioinstruct_jax.generate", "--model", model, "--prompt", "hi"]))
    assert "model.layers.0.mlp" in line and "112" in line and "128" in line


def test_debug_flag_and_env_show_the_traceback(assets, tmp_path):
    model = _copy_hf(assets, tmp_path)
    os.truncate(model / "model.safetensors", 100)
    args = ["-m", "bioinstruct_jax.generate", "--model", model, "--prompt", "hi"]
    proc = _run([*args, "--debug"])
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr
    proc = _run(args, env={**ENV, "BIOINSTRUCT_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr


# ----------------------------------------------------------------------------------------------
# Output folders


def test_export_out_under_a_file(assets, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = _one_line_error(_run(["-m", "bioinstruct_jax.export", "--base", assets["hf"],
                                 "--out", blocker / "sub" / "out"]))
    assert str(blocker) in line and "is a file" in line


@needs_unshare
def test_export_out_on_a_read_only_mount(assets, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    line = _one_line_error(_run(["-m", "bioinstruct_jax.export", "--base", assets["hf"], "--out", mnt / "out"],
                                mount=f"{mnt}:ro"))
    assert str(mnt) in line and "not writable" in line


@needs_unshare
def test_export_disk_full_names_the_file(assets, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    line = _one_line_error(_run(["-m", "bioinstruct_jax.export", "--base", assets["hf"], "--out", mnt / "out"],
                                mount=f"{mnt}:size=128k"))
    assert "model.safetensors" in line and "no space left on device" in line


@needs_unshare
def test_train_disk_full_names_the_file(assets, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    line = _one_line_error(_run(_train_args(assets, mnt / "run"), mount=f"{mnt}:size=96k"))
    assert str(mnt / "run" / "checkpoints") in line and "saving step 2" in line and "no space left on device" in line


@needs_unshare
@pytest.mark.slow
@pytest.mark.parametrize("async_save", [False, True])
def test_disk_full_during_an_orbax_write_is_one_line_and_a_named_log(assets, tmp_path, async_save):
    """The tmpfs has bytes to spare (the free-space check before a save passes) but only 20 inodes:
    Orbax's writer fails part-way through step 2 on a real ENOSPC. TensorStore's threads echo it
    (absl records, one `Event loop is closed` traceback per pending write); those go to a log file
    the error line names, and the terminal shows one line."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    logs = tmp_path / "tmp"
    logs.mkdir()
    proc = _run(_train_args(assets, mnt / "run", **{"train.async_checkpointing": async_save}),
                mount=f"{mnt}:size=64m,nr_inodes=20", env={**ENV, "TMPDIR": str(logs)})
    line = _one_line_error(proc)
    assert "Event loop is closed" not in proc.stderr and "ERROR:absl" not in proc.stderr, proc.stderr[-3000:]
    assert str(mnt / "run" / "checkpoints" / "2.orbax-checkpoint-tmp") in line and "no space left on device" in line
    log = logs / line.split("[background threads' messages: ", 1)[1].rstrip("]").rsplit("/", 1)[1]
    assert log.is_file() and "No space left on device" in log.read_text()
