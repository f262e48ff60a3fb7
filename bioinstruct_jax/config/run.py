"""The training run config (`python -m bioinstruct_jax.train --config FILE key=value ...`).

`RunConfig` is only the composition of the sections in `config.sections`; `load_run_config` reads
it through the generic loader, so every entry point that takes a run YAML (train, plan, eval,
the jobs) gets the same keys, bases and errors.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

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
    """`RunConfig` from a YAML file (and its bases) plus `key=value` overrides."""
    return load_config(RunConfig, path, overrides)
