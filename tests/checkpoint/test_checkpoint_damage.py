"""Damaged training checkpoints: named (step and file), skipped on resume, refused by export unless
--step picks an intact one, listed by `checkpoint.inspect`; and metrics.jsonl after a resume."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from bioinstruct_jax.checkpoint.integrity import DamagedCheckpointError, choose_step, verify_step

REPO = pathlib.Path(__file__).resolve().parents[2]


def _largest(pattern_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in pattern_dir.rglob("*") if p.is_file() and p.parent.name == "d"
                and "ocdbt.process" in str(p)), key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


DAMAGES = {
    # name: (damage(step_dir) -> the file that must be named)
    "truncated array chunk": lambda s: (_truncate(f := _largest(s / "lora")), f)[1],
    "missing lora/_METADATA": lambda s: ((s / "lora" / "_METADATA").unlink(), s / "lora" / "_METADATA")[1],
    "truncated meta/metadata": lambda s: (_truncate(s / "meta" / "metadata", 0.3), s / "meta" / "metadata")[1],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 and metrics for every step."""
    from bioinstruct_jax.train import loop as train
    from bioinstruct_jax.config import load_run_config
    from train_helpers import tiny_overrides, write_task

    root = tmp_path_factory.mktemp("damage")
    train_file, val_file, tok = write_task(root / "data", 64, 16)
    overrides = tiny_overrides(root / "run", train_file, val_file, **{
        "train.steps": 4, "train.save_every": 2, "train.async_checkpointing": False})
    train.run(load_run_config(None, overrides), tokenizer=tok, verbose=False)
    return root / "run", overrides, tok


def _copy(trained, tmp_path) -> pathlib.Path:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    return run


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damage_is_named_by_step_and_file(trained, tmp_path, damage):
    run = _copy(trained, tmp_path)
    named = DAMAGES[damage](run / "checkpoints" / "4")
    with pytest.raises(DamagedCheckpointError) as info:
        verify_step(run / "checkpoints" / "4")
    assert info.value.step == 4 and info.value.path == str(named)
    assert "step 4" in str(info.value) and str(named) in str(info.value)
    verify_step(run / "checkpoints" / "2")
    step, skipped = choose_step(run / "checkpoints")
    assert step == 2 and [e.step for e in skipped] == [4]


def test_resume_falls_back_to_the_newest_intact_step_and_logs_each_step_once(trained, tmp_path, capsys):
    from bioinstruct_jax.train import loop as train
    from bioinstruct_jax.config import load_run_config

    run = _copy(trained, tmp_path)
    damaged_file = DAMAGES["truncated array chunk"](run / "checkpoints" / "4")
    overrides = [o.replace(str(trained[0]), str(run)) for o in trained[1]] + ["train.steps=6"]
    result = train.run(load_run_config(None, overrides), tokenizer=trained[2], verbose=False)
    err = capsys.readouterr().err
    assert "checkpoint step 4 is damaged" in err and str(damaged_file) in err
    assert "resuming from step 2" in err
    assert result.step == 6
    assert (run / "checkpoints" / "4.damaged").is_dir()  # moved aside, not deleted
    assert choose_step(run / "checkpoints")[0] == 6
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the replayed steps 3 and 4 are not logged twice


def test_explicit_step_resumes_there(trained, tmp_path, capsys):
    from bioinstruct_jax.train import loop as train
    from bioinstruct_jax.config import load_run_config

    run = _copy(trained, tmp_path)
    overrides = [o.replace(str(trained[0]), str(run)) for o in trained[1]]
    result = train.run(load_run_config(None, overrides), tokenizer=trained[2], verbose=False, resume_step=2)
    assert result.step == 4
    assert "moved checkpoint step 4 (newer than the requested step)" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_export_names_the_damaged_step_and_takes_step(trained, tmp_path, capsys):
    from bioinstruct_jax.export import __main__ as export_cli

    run = _copy(trained, tmp_path)
    damaged_file = DAMAGES["missing lora/_METADATA"](run / "checkpoints" / "4")
    rc = export_cli.main(["--checkpoint", str(run), "--out", str(tmp_path / "o"), "--format", "peft"])
    err = capsys.readouterr().err
    assert rc == 2 and "step 4" in err and str(damaged_file) in err and "--step 2" in err
    assert not (tmp_path / "o").exists()
    assert export_cli.main(["--checkpoint", str(run), "--step", "2", "--out", str(tmp_path / "o"),
                        "--format", "peft"]) == 0


def test_inspect_lists_steps_and_marks_the_damaged_one(trained, tmp_path):
    run = _copy(trained, tmp_path)
    damaged_file = DAMAGES["truncated meta/metadata"](run / "checkpoints" / "4")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.run([sys.executable, "-m", "bioinstruct_jax.checkpoint.describe", str(run)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("  step 2: ok") for line in lines), proc.stdout
    bad = [line for line in lines if line.startswith("  step 4: DAMAGED")]
    assert bad and str(damaged_file) in bad[0]
    assert "newest intact step: 2" in proc.stdout


def test_cli_resume_on_damage_is_one_line_when_every_step_is_damaged(trained, tmp_path):
    """Subprocess: `train` on a run whose every step is damaged: one `error:` line, exit 2, no traceback."""
    run = _copy(trained, tmp_path)
    for step in ("2", "4"):
        DAMAGES["missing lora/_METADATA"](run / "checkpoints" / step)
    overrides = [o.replace(str(trained[0]), str(run)) for o in trained[1]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.run([sys.executable, "-m", "bioinstruct_jax.train", *overrides],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "every checkpoint step is damaged" in errors[0] and "_METADATA" in errors[0]
