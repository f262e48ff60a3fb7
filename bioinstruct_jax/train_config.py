"""Section dataclasses of the training run config: model, optimizer and loop settings.

`bioinstruct_jax.config.RunConfig` composes these with `LoraConfig` (model/lora.py), `MeshConfig`
(parallel.py) and `DataConfig` (data/pipeline.py). This module imports none of config.py, so the
generic loader can import it without a cycle. Values are checked in `__post_init__` so that a bad
setting fails while the YAML is read, before any model is built or step compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

_DTYPES = ("bfloat16", "float32", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The frozen base model.

    preset: a `LlamaConfig.preset` name, built with random weights from `seed` (tests, CPU runs);
    hf_path: an HF LLaMA checkpoint directory or a GGUF file / a folder holding one (takes
      precedence over preset when set).
    vocab_size: for presets only; None = the tokenizer's vocabulary size (so a SentencePiece model
    trained on the seeds fits the embedding exactly).
    tokenizer: SentencePiece `.model` / HF `tokenizer.json` / `.gguf` / a directory holding one; empty =
    the hf_path directory.
    """

    preset: str = "tiny"
    hf_path: str = ""
    vocab_size: int | None = None
    param_dtype: str = "bfloat16"
    dtype: str = "bfloat16"
    remat: bool = False
    attention_impl: Literal["xla", "cudnn"] | None = None
    seed: int = 0
    tokenizer: str = ""

    def __post_init__(self) -> None:
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"model.{name}={getattr(self, name)!r}; expected one of {list(_DTYPES)}")
        if not self.preset and not self.hf_path:
            raise ValueError("model: set model.preset (random weights) or model.hf_path (an HF checkpoint)")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"model.vocab_size={self.vocab_size} must be positive")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW on the LoRA weights with warmup then decay, global-norm clipping, accumulation.

    schedule: warmup (linear from 0) then `cosine` or `linear` decay to lr * end_lr_ratio at the
    last step, or `constant`. grad_accum: micro-batches per optimizer step (the data batch is split
    into grad_accum equal micro-batches, scanned inside the jitted step). grad_clip <= 0: no clipping.
    """

    lr: float = 2e-4
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be positive")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if self.grad_accum < 1:
            raise ValueError(f"optim.grad_accum={self.grad_accum} must be >= 1")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            raise ValueError(f"optim.end_lr_ratio={self.end_lr_ratio} must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop: length, cadence of logs / validation / checkpoints, and where things go.

    steps: optimizer steps; when 0, `epochs` passes over the training split are converted to steps
    (needs a pipeline that knows its size). output_dir: local path or gs://; a second run with the
    same directory resumes from its latest checkpoint. keep_last / keep_best: checkpoints kept
    (the newest N, plus the N best by validation loss). accelerator: for the MFU peak
    (`auto` = from the device kind; `cpu` = measured once with a matmul).
    """

    output_dir: str = "runs/tiny"
    steps: int = 200
    epochs: float = 0.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 100
    keep_last: int = 2
    keep_best: int = 1
    async_checkpointing: bool = True
    tensorboard: bool = True
    plot: bool = True
    progress_bar: bool = True
    accelerator: str = "auto"

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("train.output_dir must be set")
        if self.steps < 0 or self.epochs < 0:
            raise ValueError(f"train.steps={self.steps} / train.epochs={self.epochs} must be >= 0")
        if self.steps == 0 and self.epochs == 0:
            raise ValueError("train: set train.steps or train.epochs")
        for name in ("log_every", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= 0 (0 = never)")
        if self.keep_last < 1:
            raise ValueError(f"train.keep_last={self.keep_last} must be >= 1 (resume needs the newest checkpoint)")
        if self.keep_best < 0:
            raise ValueError(f"train.keep_best={self.keep_best} must be >= 0")
