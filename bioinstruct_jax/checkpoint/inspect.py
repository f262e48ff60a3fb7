"""`python -m bioinstruct_jax.checkpoint.inspect PATH`: an HF LLaMA directory's config and size.

Reads only `config.json` and the tensor headers (no weights are loaded) and prints the parsed
config, the parameter count from the stored tensors, and their dtypes.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys

import numpy as np

from bioinstruct_jax.checkpoint.hf import CheckpointError, _TensorSource
from bioinstruct_jax.model.llama import LlamaConfig


def describe(path: str) -> str:
    import pathlib

    directory = pathlib.Path(path)
    config = LlamaConfig.from_hf(directory)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="an HF LLaMA checkpoint directory")
    args = parser.parse_args(argv)
    try:
        print(describe(args.path))
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
