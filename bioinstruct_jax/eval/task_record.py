"""The evaluation task record: one frozen `Task` says where a task's data is, how its items are
prompted and read back, what it scores and how many tokens it may generate.

Behaviour comes from the names a record holds: its input style and answer kind
(`task_kinds.py`), its metric families (`metric_registry.py`) and its loaders (`loaders.py`).
The records themselves are declared in one table, `tasks.TASKS`; a variant of a record is
`dataclasses.replace(task, ...)` (or `seeded_subset`), never a change to the record.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import statistics
from typing import Any, Callable, Sequence

from bioinstruct_jax.data.templates import DEFAULT_TEMPLATE, render_prompt
from bioinstruct_jax.eval import metric_registry
from bioinstruct_jax.eval.loaders import Example, seeded_split
from bioinstruct_jax.eval.task_kinds import ANSWER_KINDS, INPUT_STYLES

QA, IE, GEN, USER = "qa", "ie", "gen", "user"


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where task files are: `data_dir` laid out like ../shared/data, plus per-task overrides
    `paths["medqa"]` (test split) / `paths["medqa.train"]` (shot pool)."""

    data_dir: str | None = None
    paths: dict[str, str] = dataclasses.field(default_factory=dict)

    def resolve(self, key: str, default_rel: str | None) -> pathlib.Path:
        if key in self.paths:
            return pathlib.Path(self.paths[key])
        if default_rel is None or self.data_dir is None:
            raise FileNotFoundError(
                f"no file for {key!r}: pass --data-dir (layout like ../shared/data) or --path {key}=FILE")
        return pathlib.Path(self.data_dir) / default_rel


Loader = Callable[[DataSource], list[Example]]


@dataclasses.dataclass(frozen=True)
class DataHome:
    """Where a task's files come from (the TFDS builders in `tfds_sets.py`): the homepage, how
    to get them by hand, and the files with a stable public URL (relative path -> URL)."""

    homepage: str
    manual: str
    urls: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _SeededSubset:
    """The first `n` items of a loader's list in a seeded order (all when fewer)."""

    full: Loader
    n: int
    seed: int

    def __call__(self, data: DataSource) -> list[Example]:
        exs = self.full(data)
        return seeded_split(exs, min(self.n, len(exs)), self.seed)[0]


@dataclasses.dataclass(frozen=True)
class Task:
    """One evaluation task.

    category: qa / ie / gen (the paper's table it belongs to) or user; `paper` marks the tasks
      of the paper's evaluation, grouped by category (`tasks.paper_groups`).
    test / train: the test split and the one-shot pool (None: no pool).
    input_style / answer: keys of `task_kinds.INPUT_STYLES` / `task_kinds.ANSWER_KINDS`.
    metrics: families of `metric_registry.METRICS`, computed in this order.
    max_new_tokens, budget_reason: the generation budget and why it is that size.
    headline: the metric shown when the paper reports none for the task.
    """

    name: str
    category: str
    instruction: str
    test: Loader
    train: Loader | None
    input_style: str
    answer: str
    metrics: tuple[str, ...]
    max_new_tokens: int
    budget_reason: str
    headline: str
    default_shots: int
    description: str = ""
    paper: bool = False
    context_name: str = "Context"  # question style: the label of the supporting text
    text_name: str = "Question"  # question style: the label of the item's text
    input_name: str = ""  # text styles: the label over the input ("" = none)
    labels: tuple[str, ...] | None = None  # choice answers without options: the closed label set
    parser: Callable[[str], str | None] | None = None  # choice answers: the reply parser for `labels`
    entity_types: tuple[str, ...] = ()  # entity answers: the mention types that count
    source: DataHome | None = None

    def __post_init__(self) -> None:
        for field, table in (("input_style", INPUT_STYLES), ("answer", ANSWER_KINDS)):
            if getattr(self, field) not in table:
                raise ValueError(f"task {self.name!r}: {field} {getattr(self, field)!r} not one of {list(table)}")
        for m in self.metrics:
            metric_registry.family(m)

    @property
    def kind(self) -> str:
        """The answer kind: choice, entities, medication, span or text."""
        return self.answer

    # data ------------------------------------------------------------------------------------
    def load(self, data: DataSource) -> list[Example]:
        return self.test(data)

    @property
    def has_train(self) -> bool:
        """Whether the task has a training split (the one-shot pool)."""
        return self.train is not None

    def load_train(self, data: DataSource) -> list[Example]:
        """The training split (the one-shot pool); ValueError when the task has none."""
        if self.train is None:
            raise ValueError(f"task {self.name!r} has no training split for a one-shot example")
        return self.train(data)

    def seeded_subset(self, n: int, seed: int) -> "Task":
        """This task restricted to the first n test items of a seeded order (all when fewer);
        the subsets of one seed are nested."""
        return dataclasses.replace(self, test=_SeededSubset(self.test, n, seed))

    def shot(self, data: DataSource, seed: int = 0) -> Example:
        """The one-shot example: seeded choice from the training split among examples with a
        non-empty answer and an input no longer than the median (keeps prompts short)."""
        pool = [e for e in self.load_train(data) if e.answer not in ("", [], None)]
        if not pool:
            raise ValueError(f"task {self.name!r}: training split has no usable one-shot example")
        med = statistics.median(len(self.format_input(e)) for e in pool)
        pool = [e for e in pool if len(self.format_input(e)) <= med]
        return random.Random(seed).choice(pool)

    # prompts ---------------------------------------------------------------------------------
    def instruction_for(self, ex: Example) -> str:
        return INPUT_STYLES[self.input_style].instruction(self, ex)

    def format_input(self, ex: Example) -> str:
        return INPUT_STYLES[self.input_style].text(self, ex)

    def format_target(self, ex: Example) -> str:
        return ANSWER_KINDS[self.answer].target(self, ex)

    def prompt(self, ex: Example, shot: Example | None = None, *, template: str | None = None,
               tokenizer: Any = None) -> str:
        """Zero-shot: the training template for `ex`. One-shot: the template filled with the
        shot and its answer, a blank line, then the template for `ex` (with `chat`: the shot as a
        user and an assistant turn before the question's turn, through `tokenizer`'s template)."""
        shots = [] if shot is None else [(self.instruction_for(shot), self.format_input(shot),
                                           self.format_target(shot))]
        return render_prompt(template or DEFAULT_TEMPLATE, self.instruction_for(ex), self.format_input(ex),
                             shots=shots, tokenizer=tokenizer)

    # answers ---------------------------------------------------------------------------------
    def gold(self, ex: Example) -> Any:
        return ANSWER_KINDS[self.answer].gold(self, ex)

    def parse(self, text: str, ex: Example) -> Any:
        """The prediction read from the model's reply `text` to `ex` (None when unreadable)."""
        return ANSWER_KINDS[self.answer].parse(self, text, ex)

    def choices(self, ex: Example) -> list[tuple[str, str]] | None:
        """(answer, continuation) pairs for log-likelihood scoring; None = not a choice task."""
        return ANSWER_KINDS[self.answer].choices(self, ex)

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Metrics {name: value} over a whole prediction file's records."""
        return metric_registry.score(self.metrics, records)
