"""Every file a checkpoint's index or manifest names is read from inside the checkpoint folder.

An audit hook records every file Python opens, so the tests prove that a file outside the folder
is not even opened before the error.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

import pytest

from bioinstruct_jax.checkpoint.paths import UnsafePathError, check_tree, inside

_OPENED: list[str] = []
_RECORDING = [False]


def _audit(event, args):
    if _RECORDING[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class _Recorder:
    def __enter__(self):
        _OPENED.clear()
        _RECORDING[0] = True
        return _OPENED

    def __exit__(self, *exc):
        _RECORDING[0] = False


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> pathlib.Path:
    from hf_fixtures import write_tiny_llama

    d = tmp_path_factory.mktemp("hf") / "model"
    write_tiny_llama(d)
    return d


def _sharded_copy(src: pathlib.Path, dst: pathlib.Path, shard_name: str) -> pathlib.Path:
    """`dst` with src's config and an index naming `shard_name` for every tensor."""
    from bioinstruct_jax.checkpoint.safetensors_io import SafetensorsFile

    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    names = SafetensorsFile(src / "model.safetensors").keys()
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard_name for n in names}}))
    return dst


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_index_naming_a_file_outside_the_folder_is_refused_before_it_is_opened(tiny_hf, tmp_path, kind):
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    evil = tmp_path / "elsewhere" / "evil.safetensors"
    evil.parent.mkdir()
    shutil.copy(tiny_hf / "model.safetensors", evil)
    ckpt = tmp_path / "a" / "b" / "ckpt"
    name = "../../../elsewhere/evil.safetensors" if kind == "dotdot" else str(evil)
    _sharded_copy(tiny_hf, ckpt, name)
    with _Recorder() as opened, pytest.raises(UnsafePathError) as info:
        load_pretrained(ckpt, dtype="float32")
    assert name in str(info.value) and "weight_map" in str(info.value)
    assert not any("evil" in p for p in opened), opened


def test_etc_passwd_in_the_index_is_never_opened(tiny_hf, tmp_path):
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    ckpt = _sharded_copy(tiny_hf, tmp_path / "ckpt", "../../../../../../../../etc/passwd")
    with _Recorder() as opened, pytest.raises(UnsafePathError, match="etc/passwd"):
        load_pretrained(ckpt, dtype="float32")
    assert not any(p.endswith("passwd") for p in opened), opened


def test_symlinked_weights_pointing_outside_are_refused(tiny_hf, tmp_path):
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(tiny_hf / "config.json", ckpt / "config.json")
    (ckpt / "model.safetensors").symlink_to(tiny_hf / "model.safetensors")
    with _Recorder() as opened, pytest.raises(UnsafePathError, match="model.safetensors.*symlink"):
        load_pretrained(ckpt, dtype="float32")
    assert not any(p.endswith(".safetensors") for p in opened), opened


def test_inside_links_and_the_hub_cache_layout_still_load(tiny_hf, tmp_path):
    """Links that stay inside, and hub-cache snapshots linking into their repo's blobs/, are fine."""
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    ckpt = _sharded_copy(tiny_hf, tmp_path / "ckpt", "weights/shard.safetensors")
    (ckpt / "weights").mkdir()
    shutil.copy(tiny_hf / "model.safetensors", ckpt / "real.safetensors")
    (ckpt / "weights" / "shard.safetensors").symlink_to(ckpt / "real.safetensors")
    load_pretrained(ckpt, dtype="float32")

    repo = tmp_path / "hub" / "models--x--tiny"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_hf / f, repo / "blobs" / f"hash-{f}")
        (snap / f).symlink_to(pathlib.Path("../../blobs") / f"hash-{f}")
    load_pretrained(snap, dtype="float32")


def test_peft_adapter_files_linking_outside_are_refused(tmp_path):
    from bioinstruct_jax.checkpoint.peft import read_peft_config

    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").symlink_to(outside)
    with _Recorder() as opened, pytest.raises(UnsafePathError, match="adapter_config.json"):
        read_peft_config(adapter)
    assert str(outside) not in opened


def test_orbax_run_with_a_link_out_of_the_run_is_refused(tmp_path):
    from bioinstruct_jax.checkpoint.orbax import RunCheckpointer

    step = tmp_path / "run" / "checkpoints" / "5"
    step.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (step / "lora").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="5/lora"):
        RunCheckpointer(str(tmp_path / "run"), read_only=True)


def test_inside_rules(tmp_path):
    assert inside(tmp_path, "a/b.safetensors", "index") == tmp_path / "a" / "b.safetensors"
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(UnsafePathError, match="index names"):
            inside(tmp_path, bad, "index")
    check_tree(tmp_path / "missing")  # nothing to check
