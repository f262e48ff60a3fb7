"""The training run config (`python -m bioinstruct_jax.train --config FILE key=value ...`).

`RunConfig` is only the composition of the sections in `config.sections`; `load_run_config` reads
it through the generic loader, so every entry point that takes a run YAML (train, plan, eval,
the jobs) gets the same keys, bases and errors.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

from bioinstruct_jax.config.bundled import bundled_config, bundled_file
from bioinstruct_jax.config.loader import load_config
from bioinstruct_jax.config.sections import DataConfig, LoraConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One LoRA training run: model, adapters, mesh, data, optimizer and loop settings."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def load_run_config(path: str | pathlib.Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """`RunConfig` from a YAML file (and its bases) plus `key=value` overrides.

    A config path that does not exist from the working directory may name a packaged config
    (`tiny`, `configs/tiny.yaml`), and the files a config names (tokenizer, data files) are looked
    up inside the package when they are not found from the working directory (`config.bundled`)."""
    cfg = load_config(RunConfig, bundled_config(path) if path else None, overrides)
    return with_bundled_files(cfg)


def with_bundled_files(cfg: RunConfig) -> RunConfig:
    """`cfg` with each relative file path that exists only inside the package made absolute."""
    model = {k: bundled_file(getattr(cfg.model, k)) for k in ("tokenizer", "hf_path")}
    data = {k: bundled_file(getattr(cfg.data, k)) for k in ("train_file", "val_file", "labels_file")}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model),
                               data=dataclasses.replace(cfg.data, **data))
