"""Files shipped inside the package: the seeds, the run configs and the quickstart data.

They are package data under `bioinstruct_jax/resources/`, read through `importlib.resources`, so a
wheel or a non-editable install has them too. In the repository that folder holds links to the
top-level `seeds/`, `configs/` and `data/quickstart/` (one copy of each file; a wheel build copies
the files the links point to), and the layout under it mirrors the repository's:

  resources/seeds/bioinstruct_seeds.jsonl, resources/seeds/tokenizer_sp512.model
  resources/configs/tiny.yaml, smollm2.yaml, paper/...
  resources/data/quickstart/meqsum_train.jsonl, meqsum_heldout.jsonl

so a path written relative to the repository root (`seeds/tokenizer_sp512.model` in
configs/tiny.yaml) names the same file inside the package. `bundled_config` finds a config given
as `tiny`, `tiny.yaml` or `configs/tiny.yaml` when no such file exists from the working directory;
`bundled_file` does the same for the data files a config names. A path that exists from the
working directory always wins. This module imports nothing else of the project.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib

RESOURCES = "resources"
CONFIGS = "configs"


def root() -> pathlib.Path:
    """The package's data folder (a real folder: the package is installed unzipped)."""
    return pathlib.Path(str(importlib.resources.files("bioinstruct_jax") / RESOURCES))


def bundled_file(value: str) -> str:
    """`value` itself, unless it is a relative path that does not exist from the working
    directory but does inside the package: then the packaged file's absolute path."""
    if not value or "://" in value or os.path.isabs(value) or os.path.exists(value):
        return value
    packaged = root() / value
    return str(packaged) if packaged.exists() else value


def bundled_config(path: str | os.PathLike) -> str:
    """The config file `path` names: itself when it exists, else the packaged config of that name
    (`tiny`, `tiny.yaml`, `configs/tiny.yaml`, `paper/llama2-7b-tpu-v4-8.yaml`)."""
    text = str(path)
    if os.path.exists(text) or "://" in text or os.path.isabs(text):
        return text
    name = text.removeprefix(f"{CONFIGS}/")
    for candidate in (name, f"{name}.yaml"):
        packaged = root() / CONFIGS / candidate
        if packaged.is_file():
            return str(packaged)
    return text


def config_names() -> list[str]:
    """The packaged configs, as `bundled_config` accepts them (e.g. `tiny`, `paper/llama2-7b-tpu-v4-8`)."""
    base = root() / CONFIGS
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml"))


__all__ = ["root", "bundled_file", "bundled_config", "config_names"]
