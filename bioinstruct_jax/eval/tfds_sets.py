"""TFDS builders for the evaluation sets (array_record), one per task of `eval/tasks.py`'s table, over it and
`eval/loaders.py` (so they live in the eval stage; the instruction-data builders are `data/tfds/`).

Each builder reads the files from `manual_dir` (laid out like ../shared/data: `medqa/...`,
`pubmedqa/...`), and, for sets with a stable public URL, downloads them when they are not there.
Checksums: unknown here (no network where this was written), so a first download must be run
with `--register_checksums` (TFDS records them); never downloaded in tests. Records are
`{"id": str, "example": JSON of loaders.Example}` so every task's answer type round-trips.
The builders derive from `common.SourceFileBuilder` (array_record by default, checksums beside this
file), though they read a layout of several files rather than one source file.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import tensorflow_datasets as tfds

from bioinstruct_jax.data.tfds import common
from bioinstruct_jax.eval import tasks as eval_tasks

CHECKSUM = "unknown, verify on first download (tfds build --register_checksums)"
_NO_HOME = eval_tasks.DataHome(homepage="", manual="the files the task's loaders read")


def _records(exs: list[Any]) -> Any:
    for e in exs:
        yield e.id, {"id": e.id, "example": json.dumps(e.to_json(), ensure_ascii=False)}


def _make_builder(task: eval_tasks.Task) -> type[common.SourceFileBuilder]:
    home = task.source or _NO_HOME

    class _Builder(common.SourceFileBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            f"Put the files in manual_dir laid out like ../shared/data: {home.manual}. "
            f"Checksum: {CHECKSUM}.")

        def _info(self) -> tfds.core.DatasetInfo:
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({"id": tfds.features.Text(),
                                                     "example": tfds.features.Text()}),
                homepage=home.homepage,
                description=f"Evaluation set for task {task.name!r}; example = JSON of eval.loaders.Example.")

        def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
            root = pathlib.Path(dl_manager.manual_dir)
            missing = {rel: url for rel, url in home.urls.items() if not (root / rel).exists()}
            if missing:  # public URLs: fetch into a copy of the layout
                got = dl_manager.download(missing)
                root = pathlib.Path(self.data_dir).parent / f"{task.name}_raw"
                for rel, path in got.items():
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, root / rel)
                for rel in home.urls.keys() - missing.keys():
                    shutil.copy(pathlib.Path(dl_manager.manual_dir) / rel, root / rel)
            return {k: self._generate_examples(v) for k, v in split_examples(task.name, str(root)).items()}

        def _generate_examples(self, examples: list[Any]) -> Any:
            yield from _records(examples)

    camel = "".join(w.capitalize() for w in task.name.split("_"))
    # a named subclass, registered with TFDS as bioinstruct_eval_<task>
    return type(f"BioinstructEval{camel}", (_Builder,), {"name": f"bioinstruct_eval_{task.name}",
                                                         "__module__": __name__})


def split_examples(task_name: str, data_dir: str) -> dict[str, Any]:
    """{"test": examples, "train": shot pool (when the task has one and its file exists)}."""
    task = eval_tasks.get_task(task_name)
    data = eval_tasks.DataSource(data_dir)
    splits: dict[str, Any] = {"test": task.load(data)}
    try:
        splits["train"] = task.load_train(data) if task.has_train else None
    except FileNotFoundError:
        splits["train"] = None
    return {k: v for k, v in splits.items() if v}


def builder_class(task: str) -> type[common.SourceFileBuilder]:
    """The builder class for one task (registered with TFDS as bioinstruct_eval_<task>)."""
    if task not in BUILDERS:
        raise KeyError(f"no eval TFDS builder for {task!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[task]


def example_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record back to the Example fields (dict)."""
    return json.loads(common.decode_text(record["example"]))


# one builder per task of the task table (`tasks.TASKS`, whose `source` says where the files come from)
BUILDERS: dict[str, type[common.SourceFileBuilder]] = {name: _make_builder(t) for name, t in eval_tasks.TASKS.items()}
