"""Writing a Hugging Face folder safely, for the merged export and the PEFT adapter writer alike.

- The output checks: an existing non-empty output folder is refused unless `overwrite=True`, and
  even then when it holds anything an export does not write (an overwrite replaces a previous
  export, never a user's folder); an output that is, contains or lies inside a folder being read is
  always refused (`check_not_overlapping`).
- `StagedDir`: files are written into a temporary sibling folder, renamed into place when complete
  and deleted on failure; a killed export's folder is removed by the next run (`checkpoint.staging`).
- Tensors leave the device one at a time (`plain_tensor` makes a fresh copy, `host_array` gathers it).
- HF module names and order of our Linear modules (`module_hf_name`, `hf_order`).
`ExportError` is the error of an export or adapter import that cannot be done as asked.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bioinstruct_jax.checkpoint.hf import hf_name
from bioinstruct_jax.checkpoint.staging import stale_staging, staging_dir
from bioinstruct_jax.config.storage import is_remote, local_path
from bioinstruct_jax.model.layers import Linear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Files of an HF tokenizer directory copied verbatim into a merged export.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")


class ExportError(ValueError):
    """An export or import that cannot be done as asked (names the file, tensor or setting)."""


# ----------------------------------------------------------------------------------------------
# Names


def module_hf_name(path: tuple[Any, ...]) -> str:
    """Our Linear module path -> HF module name, e.g. ('layers', 0, 'self_attn', 'q_proj') ->
    'model.layers.0.self_attn.q_proj' (from the shared parameter name table)."""
    return hf_name(tuple(path) + ("kernel",)).removesuffix(".weight")


def linear_modules(model: nnx.Module) -> dict[tuple[Any, ...], Linear]:
    """Every Linear (plain or LoRA) of the model by path."""
    return {tuple(p): n for p, n in nnx.iter_graph(model) if isinstance(n, Linear)}


def hf_order(name: str) -> tuple[int, int, str]:
    m = re.match(r"model\.layers\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return ({"model.embed_tokens.weight": 0, "model.norm.weight": 2}.get(name, 3), 0, name)


# ----------------------------------------------------------------------------------------------
# Output directories


def _export_file(name: str) -> bool:
    """A file name an export writes (what --overwrite may replace)."""
    return (name in TOKENIZER_FILES or name in ("config.json", "generation_config.json", ADAPTER_CONFIG, "README.md",
                                                "model.safetensors.index.json", "adapter_model.bin")
            or name.endswith(".safetensors") or name.endswith(".gguf"))


def check_out_dir(out_dir: pathlib.Path, overwrite: bool) -> None:
    """Refuse an output that exists and is not an empty folder; with overwrite, one that holds
    anything an export does not write (replacing it could delete the user's files)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"output path {out_dir} exists and is not a directory")
        entries = sorted(out_dir.iterdir())
        if entries and not overwrite:
            raise ExportError(f"output directory {out_dir} already exists and is not empty; "
                              f"choose another --out or pass --overwrite (overwrite=True) to replace it")
        foreign = [e.name for e in entries if not (e.is_file() and _export_file(e.name))]
        if entries and foreign:
            raise ExportError(f"output directory {out_dir} holds {foreign[0]!r}"
                              f"{f' and {len(foreign) - 1} more entries' if len(foreign) > 1 else ''}, "
                              f"which an export does not write; --overwrite replaces only a previous export, "
                              f"so choose another --out (or remove the folder yourself)")
    else:
        _check_writable_parent(out_dir)


def _check_writable_parent(out_dir: pathlib.Path) -> None:
    """The nearest existing ancestor of a new output folder must be a writable directory."""
    parent = out_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"--out {out_dir}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"--out {out_dir}: {parent} is not writable (read-only file system or no permission)")


def check_not_overlapping(out_dir: str | pathlib.Path, sources: dict[str, Any]) -> None:
    """Refuse an output folder that is, contains, or lies inside a folder the export reads.

    sources: what -> path (e.g. {"training run": RUN}). Paths are compared after resolving
    symlinks, so a link to the run is caught too. The output is a local folder (an export writes
    through local renames); a source in a bucket cannot overlap it."""
    out = local_path(out_dir, "an export's --out").resolve()
    for what, src in sources.items():
        if not src or is_remote(src):
            continue
        source = pathlib.Path(src).resolve()
        relation = ("is" if out == source else "lies inside" if out.is_relative_to(source)
                    else "contains" if source.is_relative_to(out) else None)
        if relation:
            raise ExportError(f"--out {out_dir} {relation} the {what} {src} that is being exported; "
                              f"an export never writes over its input: choose an --out outside it")


def clear_stale_staging(out_dir: pathlib.Path) -> None:
    """Before an export: remove what a killed export of `out_dir` left (one note line each); refuse
    while another process is still writing it."""
    for tmp, pid, running in stale_staging(out_dir):
        if running:
            raise ExportError(f"{out_dir}: process {pid} is exporting into it now (its unfinished files are in "
                              f"{tmp}); wait for it to finish or stop it, then rerun")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"note: removed {tmp}, an unfinished export of {out_dir.name} left by process {pid} "
              f"(no longer running)", file=sys.stderr)


class StagedDir:
    """Write into `.NAME.tmp-PID` beside `out_dir` (`checkpoint.staging`); rename into place on
    success, delete on failure. A killed export's staging folder is removed first (a live one refused)."""

    def __init__(self, out_dir: pathlib.Path, overwrite: bool):
        check_out_dir(out_dir, overwrite)
        self.out_dir = out_dir
        self.tmp = staging_dir(out_dir)

    def __enter__(self) -> pathlib.Path:
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_staging(self.out_dir)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        os.replace(self.tmp, self.out_dir)


def write_json(path: pathlib.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_text_files(folder: pathlib.Path, files: dict[str, str] | None) -> None:
    """name -> text files (the model card) into an export's staging folder."""
    for name, text in (files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Tensors to the host


@jax.jit(static_argnames=("transpose", "dtype"))
def plain_tensor(x, *, transpose: bool, dtype):
    # An explicit copy, so the output is always a fresh array (jit forwards unchanged inputs):
    # its host copy is cached on it and freed with it, never on the model's parameter.
    return jnp.array(x.T if transpose else x, dtype=dtype, copy=True)


def host_array(x: jax.Array) -> np.ndarray:
    """Gather one (possibly sharded) array to host memory."""
    if not x.is_fully_addressable:
        raise ExportError("exporting arrays that span several processes is not supported; "
                          "restore the checkpoint in a single process (restore_run does)")
    return np.asarray(x)
