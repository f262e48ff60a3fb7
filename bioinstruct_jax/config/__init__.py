"""Configuration, the first stage: typed dataclass configs from YAML files plus `key=value` overrides.

  loader    the generic loader (YAML, `extends:` base files, overrides, `ConfigError`s naming the
            key, the file and the closest valid keys); imports nothing else of the project
  sections  the run config's sections (model, lora, mesh, data, optim, train)
  run       `RunConfig`, their composition, and `load_run_config`
  flags     command-line flags derived from a dataclass's fields (one flag per field)
  storage   paths local or gs:// (one path type, etils epath), the missing-extra and local-only errors
  bundled   the seeds, configs and quickstart data shipped inside the package (importlib.resources)

The names callers use are re-exported here (`from bioinstruct_jax.config import load_run_config`).
Unlike other packages' `__init__` files this one may re-export: the package imports nothing of the
project outside itself, so no import circle can pass through it.
"""

from bioinstruct_jax.config.loader import (ConfigError, apply_overrides, config_files, dump_yaml, from_dict,
                                           load_config, load_yaml, resolve_yaml, to_dict)
from bioinstruct_jax.config.run import RunConfig, load_run_config
from bioinstruct_jax.config.sections import (DataConfig, LoraConfig, MeshConfig, ModelConfig, OptimConfig,
                                             TrainConfig)

__all__ = ["ConfigError", "apply_overrides", "config_files", "dump_yaml", "from_dict", "load_config", "load_yaml",
           "resolve_yaml", "to_dict", "RunConfig", "load_run_config", "DataConfig", "LoraConfig", "MeshConfig",
           "ModelConfig", "OptimConfig", "TrainConfig"]
