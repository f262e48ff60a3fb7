"""Exports are whole or absent: an export killed between two shards leaves no output folder, only its
staging folder, which readers refuse and the next run removes (saying so) before it writes the whole export.

The kill is forced by `BIOINSTRUCT_TEST_EXPORT_KILL_AFTER_SHARD=N` (SIGKILL after the N-th
safetensors shard; GGUF: the N-th tensor) in a real `python -m bioinstruct_jax.export` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from bioinstruct_jax.checkpoint.errors import CheckpointError
from bioinstruct_jax.checkpoint.hf import load_pretrained
from bioinstruct_jax.checkpoint.staging import KILL_AFTER_SHARD_ENV
from bioinstruct_jax.export import __main__ as export_cli
from hf_fixtures import write_tiny_llama
from test_export_gguf import write_bpe_tokenizer

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_export(args, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(KILL_AFTER_SHARD_ENV, None)
    if kill_after is not None:
        env[KILL_AFTER_SHARD_ENV] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "bioinstruct_jax.export", *args], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill") / "base"
    vocab = write_bpe_tokenizer(d)
    write_tiny_llama(d, "mha_untied", vocab_size=vocab)
    return d


def staging_folders(out):
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def test_merged_export_killed_between_shards_then_rerun(base, tmp_path):
    out = tmp_path / "merged"
    args = ["--base", str(base), "--out", str(out), "--max-shard-size", "100KB"]
    killed = run_export(args, kill_after=1)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()  # never a partial output folder
    [staged] = staging_folders(out)
    shards = sorted(p.name for p in staged.glob("*.safetensors"))
    assert len(shards) == 1 and shards[0].startswith("model-00001-of-")  # killed between shard 1 and shard 2
    assert not (staged / "model.safetensors.index.json").exists()
    with pytest.raises(CheckpointError, match="unfinished export of merged"):
        load_pretrained(staged)

    rerun = run_export(args)
    assert rerun.returncode == 0, rerun.stderr
    pid = staged.name.rsplit("-", 1)[1]
    assert f"note: removed {staged}, an unfinished export of merged left by process {pid}" in rerun.stderr
    assert staging_folders(out) == []
    assert export_cli.main(["--base", str(base), "--out", str(tmp_path / "uninterrupted"),
                            "--max-shard-size", "100KB"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "uninterrupted").iterdir())
    for name in names:
        if name.endswith(".safetensors"):
            assert (out / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes(), name
    transformers.AutoModelForCausalLM.from_pretrained(out)


def test_gguf_export_killed_mid_file_then_rerun(base, tmp_path):
    out = tmp_path / "gguf"
    args = ["--base", str(base), "--out", str(out), "--format", "gguf"]
    assert run_export(args, kill_after=3).returncode == -signal.SIGKILL
    assert not out.exists()
    [staged] = staging_folders(out)
    with pytest.raises(CheckpointError, match="unfinished export"):
        load_pretrained(staged / "model-F32.gguf")
    assert export_cli.main(args) == 0  # the rerun, in this process
    assert staging_folders(out) == [] and (out / "model-F32.gguf").is_file()
    load_pretrained(out, dtype="float32")


def test_export_refuses_while_another_process_writes_the_same_output(base, tmp_path, capsys):
    out = tmp_path / "busy"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        staged = tmp_path / f".busy.tmp-{other.pid}"
        staged.mkdir()
        assert export_cli.main(["--base", str(base), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        assert f"process {other.pid} is exporting into it now" in err[0] and str(staged) in err[0]
        assert staged.is_dir() and not out.exists()  # nothing of the other export touched
    finally:
        other.kill()
        other.wait()
