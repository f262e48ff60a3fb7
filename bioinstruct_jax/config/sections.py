"""The sections of the training run config: model, LoRA adapters, mesh, data, optimizer, loop.

`config.run.RunConfig` composes them. They are the schema of the first stage, so the stages that
use them (parallel, model, data, train) import them from here and this module imports nothing else
of the project. Values are checked in `__post_init__` so that a bad setting fails while the YAML is
read, before any model is built or step compiled.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Literal, Mapping

_DTYPES = ("bfloat16", "float32", "float16")

# The projections of a LLaMA layer that can carry a LoRA adapter (the model's module names).
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Prompt template names a run may choose (`data.template`); `data.templates` holds what each one
# renders (tests/config/test_config.py checks that it renders exactly these).
DEFAULT_TEMPLATE = "alpaca"
CHAT_TEMPLATE = "chat"
TEMPLATE_NAMES: tuple[str, ...] = ("alpaca", "bioinstruct_paper", CHAT_TEMPLATE)


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
    (needs a pipeline that knows its size; with data.packing a pass counts packed batches, not
    records / batch_size). output_dir: local path or gs://; a second run with the
    same directory resumes from its latest checkpoint. keep_last / keep_best: checkpoints kept
    (the newest N, plus the N best by validation loss). accelerator: for the MFU peak
    (`auto` = from the device kind; `cpu` = measured once with a matmul). skip_nonfinite_batches:
    how many batches with a NaN/Inf loss or gradient may be skipped (their update is not applied)
    before the run stops; 0 = stop at the first one. Either way a non-finite state is never saved.
    lock_lease_s: the run lock's lease (`checkpoint/run_lock.py`): a lock held from another host
    and not refreshed for this many seconds is taken over (the holder refreshes it at every metrics
    log and checkpoint save, so keep it well above the time between two of those).
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
    skip_nonfinite_batches: int = 0
    lock_lease_s: int = 3600

    def __post_init__(self) -> None:
        if self.lock_lease_s < 1:
            raise ValueError(f"train.lock_lease_s={self.lock_lease_s} must be >= 1")
        if self.skip_nonfinite_batches < 0:
            raise ValueError(f"train.skip_nonfinite_batches={self.skip_nonfinite_batches} must be >= 0")
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


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections get adapters and how they are scaled.

    targets: module names (any of ALL_TARGETS); target_regex, when set, replaces them and is
    matched against the '/'-joined module path, e.g. `layers/\\d+/self_attn/(q|v)_proj`.
    rslora: scale alpha / sqrt(r) instead of alpha / r.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    target_regex: str = ""
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in ALL_TARGETS]
        if unknown and not self.target_regex:
            raise ValueError(f"lora.targets: unknown module name(s) {unknown}; choose from {list(ALL_TARGETS)}")
        if self.target_regex:
            try:
                re.compile(self.target_regex)
            except re.error as err:
                raise ValueError(f"lora.target_regex {self.target_regex!r} is not a valid regex: {err}") from None

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def matches(self, path: tuple[Any, ...]) -> bool:
        """Whether the module at `path` (e.g. ('layers', 0, 'self_attn', 'q_proj')) is targeted."""
        if self.target_regex:
            return re.fullmatch(self.target_regex, "/".join(map(str, path))) is not None
        return bool(path) and path[-1] in self.targets


class ShardingError(ValueError):
    """A mesh, parameter or batch that cannot be laid out on the devices as asked (raised here by
    `MeshConfig.resolve`, and by `parallel.sharding` for parameters, activations and batches)."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; at most one may be -1, meaning "all remaining devices"."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) sizes for `num_devices` devices; errors name the bad axis."""
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for name, size in sizes.items():
            if size == 0 or size < -1:
                raise ShardingError(f"mesh.{name}={size}: axis sizes must be >= 1 (or -1 for the rest)")
        free = [n for n, s in sizes.items() if s == -1]
        if len(free) > 1:
            raise ShardingError(f"mesh: only one axis may be -1, got {', '.join(free)} = -1")
        fixed = math.prod(s for s in sizes.values() if s != -1)
        if free:
            if num_devices % fixed:
                raise ShardingError(
                    f"mesh: {num_devices} devices are not divisible by the fixed axes "
                    f"({_describe(sizes)}, product {fixed}), so mesh.{free[0]}=-1 cannot take the rest"
                )
            sizes[free[0]] = num_devices // fixed
        elif fixed != num_devices:
            raise ShardingError(
                f"mesh: {_describe(sizes)} needs {fixed} devices but {num_devices} are available"
            )
        return sizes["data"], sizes["fsdp"], sizes["tensor"]


def _describe(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The `data:` section of a run config.

    train_file: JSON array or JSON lines of instruction records (the published 25K file, generated
      data, the seeds). val_file: a separate validation file; empty = hold out `val_fraction` of
      train_file by record hash.
    tfds_config: empty = read train_file directly; else a `bioinstruct` TFDS config (`all`, `qa`,
      `ie`, `gen`, `other`, `all_5k` ... `all_25k`, `<category>_<n>[k]`) built from train_file
      (labels from labels_file when the file has no categories) into tfds_data_dir.
    template: one of TEMPLATE_NAMES. max_length: input positions per row.
    batch_size: global rows per step (split over hosts). packing: several examples per row.
    num_epochs: passes over the training split (None = repeat forever); validation is one pass.
    shuffle: reshuffle the training split every epoch (seeded). skip_malformed: skip (and count)
      bad records instead of failing. pad_id: None = the tokenizer's pad id.
    """

    train_file: str = "seeds/bioinstruct_seeds.jsonl"
    val_file: str = ""
    val_fraction: float = 0.1
    labels_file: str = ""
    tfds_config: str = ""
    tfds_data_dir: str = ""
    template: str = DEFAULT_TEMPLATE
    max_length: int = 256
    batch_size: int = 8
    packing: bool = False
    seed: int = 0
    num_epochs: int | None = None
    shuffle: bool = True
    skip_malformed: bool = False
    pad_id: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_length < 2:
            raise ValueError(f"data.batch_size={self.batch_size} / data.max_length={self.max_length} too small")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        if self.template not in TEMPLATE_NAMES:
            raise ValueError(f"data.template={self.template!r}; known: {sorted(TEMPLATE_NAMES)}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"data.num_epochs={self.num_epochs} must be >= 1 (or null = forever)")
