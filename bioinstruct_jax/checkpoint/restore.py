"""Restore a training run from its checkpoints alone: the one path generate, eval and export take.

`restore_run(path, step=None, mesh=None)` opens the run read-only (its output_dir or `checkpoints/`
folder), picks the step (`integrity.pick_restore_step`: the requested one, checked, or the newest
when intact; a damaged step is an error naming it), reads the run config and model signature the
step saved, rebuilds base + LoRA with the model factory (`factory.build_model`: HF / GGUF weights
from model.hf_path, or the seeded preset, bit-identical to training's), fills in the step's LoRA
(and LoRA-dropout RNG) state, and returns a `RestoredRun`: the model in eval mode with adapters
not merged, on `mesh` (default: one device).

Training's resume builds its model with the same factory and restores the same items through the
same `RunCheckpointer.restore`, with the optimizer state and data-iterator state besides
(`train.loop.run`).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from bioinstruct_jax.checkpoint import factory
from bioinstruct_jax.checkpoint.integrity import pick_restore_step
from bioinstruct_jax.checkpoint.orbax import RunCheckpointer
from bioinstruct_jax.config import RunConfig, from_dict
from bioinstruct_jax.model.config import LlamaConfig
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.config.sections import LoraConfig
from bioinstruct_jax.parallel import sharding
from bioinstruct_jax.train import step as train_step


@dataclasses.dataclass
class RestoredRun:
    """A training run restored at one step.

    model: base + LoRA with the step's weights, eval mode, adapters not merged.
    config: the run config the checkpoint saved; lora: its LoRA settings (`config.lora`).
    tokenizer: the run's tokenizer path (model.tokenizer, else model.hf_path), or None.
    """

    model: Llama
    config: RunConfig
    llama_config: LlamaConfig
    step: int
    directory: str
    tokenizer: str | None

    @property
    def lora(self) -> LoraConfig:
        return self.config.lora


def one_device_mesh() -> jax.sharding.Mesh:
    """The (1, 1, 1) mesh on the first device, where a read-only command restores by default."""
    return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def read_run_config(ckpt: RunCheckpointer, step: int) -> tuple[RunConfig, LlamaConfig]:
    """The run config and architecture a step saved (its `meta` item)."""
    meta = ckpt.read_meta(step)
    cfg = from_dict(RunConfig, meta["config"], origin=f"{ckpt.directory}/{step}/meta")
    return cfg, factory.llama_config_from_dict(meta["model_signature"]["architecture"])


def restore_run(path: str, step: int | None = None, mesh: jax.sharding.Mesh | None = None) -> RestoredRun:
    """The training run at `path` (output_dir or its checkpoints/ folder) at `step` (default: the
    newest, when intact), on `mesh` (default: one device); see the module docstring."""
    ckpt = RunCheckpointer(str(path), read_only=True)
    try:
        chosen = pick_restore_step(ckpt.directory, step)  # a damaged step is an error naming step and file
        chosen = ckpt.latest_step() if chosen is None else chosen
        if chosen is None:
            raise FileNotFoundError(f"{ckpt.directory}: no checkpoint to restore")
        cfg, llama_config = read_run_config(ckpt, chosen)
        model = factory.build_model(cfg, llama_config, one_device_mesh() if mesh is None else mesh)
        _, lora, rng, _ = train_step.split_model(model)
        restored = ckpt.restore(chosen, lora=lora, opt_state=None, rng=rng)
        nnx.update(model, restored["lora"], restored["rng"])
    finally:
        ckpt.close()
    model.eval()
    return RestoredRun(model=model, config=cfg, llama_config=llama_config, step=int(chosen),
                       directory=str(ckpt.directory), tokenizer=factory.run_tokenizer_path(cfg))
