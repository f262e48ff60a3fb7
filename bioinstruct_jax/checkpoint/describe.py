"""`python -m bioinstruct_jax.checkpoint.describe PATH`: an HF LLaMA directory, or a training run's steps.

For an HF directory: reads only `config.json` and the tensor headers (no weights are loaded) and
prints the parsed config, the parameter count from the stored tensors, and their dtypes.
For a training run (its output_dir or `checkpoints/` folder, local or gs://): one line per saved step, `ok` or
`DAMAGED` with the file and the reason (`checkpoint.integrity.verify_step` reads every array
back), and the folders of damaged steps a resume has moved aside. Exit code 1 when a step is
damaged, 0 when all are intact.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys

import numpy as np

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli.arguments import ArgumentParser
from bioinstruct_jax.checkpoint.hf import _TensorSource
from bioinstruct_jax.checkpoint.integrity import DamagedCheckpointError, step_dirs, verify_step
from bioinstruct_jax.checkpoint.orbax import checkpoint_dir, is_run
from bioinstruct_jax.checkpoint.paths import check_tree, inside
from bioinstruct_jax.config.storage import is_remote, local_path
from bioinstruct_jax.model.config import LlamaConfig


def describe(path: str) -> str:
    directory = local_path(path, "reading an HF / GGUF model (only training runs are read from a bucket)")
    config = LlamaConfig.from_hf(inside(directory, "config.json", "the checkpoint"))
    source = _TensorSource(directory)
    count, dtypes = 0, collections.Counter()
    for name in source.weight_map:
        count += int(np.prod(source.shape(name), dtype=np.int64))
        dtypes[str(source._open(source.weight_map[name]).dtype(name))] += 1 if name.endswith(".weight") else 0
    lines = [f"checkpoint: {directory}"]
    lines += [f"  {f.name}: {getattr(config, f.name)}" for f in dataclasses.fields(config)]
    lines.append(f"tensors: {len(source.weight_map)} ({', '.join(f'{n} {d}' for d, n in dtypes.items())})")
    lines.append(f"parameters stored: {count:,}")
    lines.append(f"parameters in model: {config.num_params():,}")
    return "\n".join(lines)


def describe_run(path: str) -> tuple[str, int]:
    """(one line per step of a training run, number of damaged steps)."""
    directory = checkpoint_dir(path)  # local or gs://
    if not is_remote(directory):
        check_tree(directory, "training checkpoint folder")
    steps = step_dirs(directory)
    lines = [f"run checkpoints: {directory}  ({len(steps)} step(s))"]
    intact, damaged = [], 0
    for step, step_dir in sorted(steps.items()):
        try:
            verify_step(step_dir)
        except DamagedCheckpointError as err:
            damaged += 1
            lines.append(f"  step {step}: DAMAGED  {err}")
            continue
        intact.append(step)
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
        items = sorted(p.name for p in step_dir.iterdir() if p.is_dir())
        lines.append(f"  step {step}: ok  (of {meta.get('total_steps')} steps; items {', '.join(items)})")
    aside = sorted(p.name for p in directory.iterdir() if ".damaged" in p.name) if directory.is_dir() else []
    if aside:
        lines.append(f"  moved aside by a resume: {', '.join(aside)}")
    if damaged:
        lines.append(f"newest intact step: {max(intact)} (a resume falls back to it; export, generate and eval "
                     f"take --step {max(intact)})" if intact else "no intact step")
    return "\n".join(lines), damaged


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m bioinstruct_jax.checkpoint.describe", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="an HF LLaMA checkpoint directory, or a training run (output_dir)")
    cli_errors.add_debug_argument(parser)
    args = parser.parse_args(argv)
    try:
        if is_run(args.path):
            text, damaged = describe_run(args.path)
            print(text)
            return 1 if damaged else 0
        print(describe(args.path))
    except (ValueError, OSError) as err:  # CheckpointError, SafetensorsError, a missing file
        return cli_errors.report_or_raise(err)
    return 0


if __name__ == "__main__":
    sys.exit(cli_errors.run(main))
