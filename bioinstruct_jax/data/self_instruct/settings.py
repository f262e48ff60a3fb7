"""The settings of one generation (or `--label-only`) run; each field declares its own flag(s)."""

from __future__ import annotations

import dataclasses

from bioinstruct_jax.cli.arguments import non_negative_float, non_negative_int, positive_float, positive_int, unit_interval
from bioinstruct_jax.config.flags import Flag, flag_field
from bioinstruct_jax.data.labels import LabelSettings
from bioinstruct_jax.data.llm_client import LLMClientConfig
from bioinstruct_jax.data.seeds import DEFAULT_SEEDS_PATH

PAPER_NUM_INSTRUCTIONS = 25_005  # the size of the published BioInstruct file (PAPER.md §1)
DEFAULT_OUTPUT = "data/bioinstruct_generated.jsonl"


@dataclasses.dataclass
class GenerateConfig:
    """The settings of one generation (or --label-only) run; each field declares its own flag(s)."""

    output: str = flag_field(DEFAULT_OUTPUT, Flag("--out", default=None, aliases=("--output",), help=(
        f"JSONL to append to, resumed if it exists (default {DEFAULT_OUTPUT}); with --label-only the "
        "labels file (default: <input stem>.labels.jsonl beside the input)")))
    label_only: bool = flag_field(False, Flag(action="store_true", help=(  # label `input` into `output`; no generation
        "only label the tasks of --input (no generation); resumable like generation")))
    input: str | None = flag_field(None, Flag(help="with --label-only: the instruction file (JSON array or JSON lines)"))
    seeds_path: str = flag_field(str(DEFAULT_SEEDS_PATH), Flag("--seeds"))
    num_instructions: int = flag_field(PAPER_NUM_INSTRUCTIONS, Flag(type=positive_int, help=(
        f"tasks to generate (default {PAPER_NUM_INSTRUCTIONS:,}, the paper's count)")))
    model: str = flag_field("gpt-4", Flag("--teacher-model", aliases=("--model",), help=(
        "the API model that writes and labels the tasks (default gpt-4, the paper's)")))
    base_url: str | None = flag_field(None, Flag(help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"))
    api_key_env: str = flag_field("OPENAI_API_KEY", Flag(help="environment variable holding the API key"))
    concurrency: int = flag_field(4, Flag(type=positive_int))
    temperature: float = flag_field(1.0, Flag(type=non_negative_float))
    top_p: float = flag_field(1.0, Flag(type=unit_interval))
    max_tokens: int = flag_field(3072, Flag(type=positive_int))
    num_prompt_seeds: int = flag_field(3, Flag(type=positive_int))
    seed: int = flag_field(0, Flag(type=int))
    rouge_threshold: float = flag_field(0.7, Flag(type=unit_interval))
    min_words: int = flag_field(3, Flag(type=positive_int))
    max_words: int = flag_field(150, Flag(type=positive_int))
    label_with_model: bool = flag_field(True, Flag(action="store_true"), Flag("--no-label", action="store_false", help=(
        "keep labels the model gave (if any) instead of a labelling pass")))
    label_batch_size: int = flag_field(20, Flag(type=positive_int))
    label_attempts: int = flag_field(2, Flag(type=positive_int, help=(
        "rounds of the labelling pass: a task left unlabelled is asked again in a smaller batch")))
    timeout_s: float = flag_field(120.0, Flag("--timeout", type=positive_float))
    max_retries: int = flag_field(6, Flag(type=non_negative_int))
    backoff_s: float = flag_field(1.0, Flag("--backoff", type=non_negative_float))
    backoff_max_s: float = flag_field(30.0, Flag("--backoff-max", type=non_negative_float))
    max_requests: int | None = flag_field(None, Flag(type=positive_int))  # per invocation; None: no limit
    # consecutive requests with nothing accepted -> stop
    max_unproductive_requests: int = flag_field(200, Flag(type=positive_int))
    progress: bool = flag_field(True, Flag("--no-progress", action="store_false"))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first setting out of range (the CLI's types refuse them earlier)."""
        checks = [("num_instructions", self.num_instructions >= 1), ("concurrency", self.concurrency >= 1),
                  ("max_tokens", self.max_tokens >= 1), ("num_prompt_seeds", self.num_prompt_seeds >= 1),
                  ("label_batch_size", self.label_batch_size >= 1), ("label_attempts", self.label_attempts >= 1),
                  ("temperature", self.temperature >= 0), ("top_p", 0 < self.top_p <= 1),
                  ("rouge_threshold", 0 < self.rouge_threshold <= 1), ("min_words", self.min_words >= 1),
                  ("max_words", self.max_words >= self.min_words), ("timeout_s", self.timeout_s > 0),
                  ("max_retries", self.max_retries >= 0), ("backoff_s", self.backoff_s >= 0),
                  ("backoff_max_s", self.backoff_max_s >= 0),
                  ("max_requests", self.max_requests is None or self.max_requests >= 1),
                  ("max_unproductive_requests", self.max_unproductive_requests >= 1)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"generation setting {name}={getattr(self, name)!r} is out of range")

    def client_config(self) -> LLMClientConfig:
        return LLMClientConfig(model=self.model, base_url=self.base_url, api_key_env=self.api_key_env,
                               timeout_s=self.timeout_s, max_retries=self.max_retries,
                               backoff_s=self.backoff_s, backoff_max_s=self.backoff_max_s)

    def label_settings(self) -> LabelSettings:
        return LabelSettings(batch_size=self.label_batch_size, concurrency=self.concurrency,
                             attempts=self.label_attempts)
