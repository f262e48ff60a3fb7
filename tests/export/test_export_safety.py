"""Export never deletes what it reads, nor a folder that is not a previous export."""

from __future__ import annotations

import json
import pathlib

import pytest

from bioinstruct_jax.checkpoint import output
from bioinstruct_jax.export import __main__ as export_cli


def _fake_run(path: pathlib.Path) -> pathlib.Path:
    """A run folder with files that must survive (the overlap check comes before any restore)."""
    (path / "checkpoints" / "7" / "meta").mkdir(parents=True)
    (path / "metrics.jsonl").write_text('{"step": 7}\n')
    return path


def _files(path: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("where", ["same", "inside", "parent", "symlink", "checkpoints-folder"])
def test_out_overlapping_the_run_is_refused_even_with_overwrite(tmp_path, capsys, where):
    run = _fake_run(tmp_path / "runs" / "run")
    before = _files(tmp_path)
    checkpoint, out = run, {"same": run, "inside": run / "export", "parent": tmp_path / "runs",
                            "symlink": tmp_path / "link", "checkpoints-folder": run}[where]
    if where == "symlink":
        out.symlink_to(run)
        before = _files(tmp_path)
    if where == "checkpoints-folder":
        checkpoint = run / "checkpoints"  # the run is still the folder above it
    rc = export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--format", "merged", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "training run" in err and "never writes over its input" in err
    assert {"same": " is the", "symlink": " is the", "inside": "lies inside", "parent": "contains",
            "checkpoints-folder": " is the"}[where] in err
    assert _files(tmp_path) == before  # nothing deleted, nothing written


def test_out_inside_the_base_or_adapter_is_refused(tmp_path, capsys):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text("{}")
    rc = export_cli.main(["--base", str(base), "--adapter", str(adapter), "--out", str(adapter), "--overwrite"])
    assert rc == 2 and "PEFT adapter" in capsys.readouterr().err
    rc = export_cli.main(["--base", str(base), "--out", str(base / "merged")])
    assert rc == 2 and "lies inside the base model" in capsys.readouterr().err
    assert (base / "config.json").read_text() == "{}"


def test_overwrite_refuses_a_folder_that_is_not_a_previous_export(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    with pytest.raises(output.ExportError, match=r"holds 'notes.txt'.*only a previous export"):
        output.check_out_dir(out, overwrite=True)
    (out / "notes.txt").unlink()
    output.check_out_dir(out, overwrite=True)  # a previous export (or what looks like one) may go


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """A tiny HF model and a PEFT adapter made by peft itself."""
    peft = pytest.importorskip("peft")
    from hf_fixtures import write_tiny_llama

    root = tmp_path_factory.mktemp("safety")
    model = write_tiny_llama(root / "base")
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    peft_model.save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


def test_format_both_into_a_non_empty_folder_keeps_other_files_and_says_so(base_and_adapter, tmp_path, capsys):
    base, adapter = base_and_adapter
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc = export_cli.main(["--base", str(base), "--adapter", str(adapter), "--out", str(out), "--format", "both"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (out / "notes.txt").read_text() == "mine"
    assert "--format both wrote only" in captured.err and "notes.txt" in captured.err
    files = json.loads(captured.out)["files"]
    assert "notes.txt" not in files and "merged/config.json" in files and "peft/adapter_config.json" in files
    # again: merged/ and peft/ hold a previous export, so --overwrite may replace them
    (out / "merged" / "mine.txt").write_text("x")
    rc = export_cli.main(["--base", str(base), "--adapter", str(adapter), "--out", str(out), "--format", "both",
                      "--overwrite"])
    assert rc == 2 and "holds 'mine.txt'" in capsys.readouterr().err
    (out / "merged" / "mine.txt").unlink()
    assert export_cli.main(["--base", str(base), "--adapter", str(adapter), "--out", str(out), "--format", "both",
                        "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
