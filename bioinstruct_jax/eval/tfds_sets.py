"""TFDS builders for the evaluation sets (array_record), one per task, over `eval/tasks.py` and
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

import dataclasses
import json
import pathlib
import shutil
from typing import Any

import tensorflow_datasets as tfds

from bioinstruct_jax.data.tfds import common
from bioinstruct_jax.eval import tasks as eval_tasks


@dataclasses.dataclass(frozen=True)
class EvalSetSpec:
    task: str  # our task name (bioinstruct_jax.eval.tasks)
    homepage: str
    urls: dict[str, str]  # relative path under the data layout -> canonical download URL
    manual: str  # how to get the files by hand
    checksum: str = "unknown, verify on first download (tfds build --register_checksums)"


_GH = "https://raw.githubusercontent.com"
SPECS: dict[str, EvalSetSpec] = {
    "medqa": EvalSetSpec("medqa", "https://github.com/jind11/MedQA", {},
                         "From the MedQA repository's Google Drive folder: data_clean/questions/US/4_options/"
                         "phrases_no_exclude_{test,train}.jsonl -> medqa/US_4_options_{test,train}.jsonl"),
    "medmcqa": EvalSetSpec("medmcqa", "https://medmcqa.github.io", {},
                           "https://drive.google.com/uc?export=download&id=15VkJdq5eyWIkfb_aoD3oS8i4tScbHYky "
                           "(zip) -> medmcqa/dev.json and medmcqa/train.json"),
    "pubmedqa": EvalSetSpec("pubmedqa", "https://pubmedqa.github.io", {
        "pubmedqa/ori_pqal.json": f"{_GH}/pubmedqa/pubmedqa/master/data/ori_pqal.json",
        "pubmedqa/test_ground_truth.json": f"{_GH}/pubmedqa/pubmedqa/master/data/test_ground_truth.json"},
        "pubmedqa/ori_pqal.json and pubmedqa/test_ground_truth.json from the PubMedQA repository"),
    "bioasq": EvalSetSpec("bioasq", "http://participants-area.bioasq.org", {},
                          "BioASQ Task B gold files (registration needed) -> bioasq/Task*BGoldenEnriched/*golden*.json"),
    "mednli": EvalSetSpec("mednli", "https://physionet.org/content/mednli/", {},
                          "Credentialed PhysioNet access -> mednli/mli_{test,train}_v1.jsonl"),
    "bc5cdr": EvalSetSpec("bc5cdr", "https://github.com/cambridgeltl/MTL-Bioinformatics-2016", {
        f"ner/BC5CDR-IOB/{s}.tsv": f"{_GH}/cambridgeltl/MTL-Bioinformatics-2016/master/data/BC5CDR-IOB/{s}.tsv"
        for s in ("train", "test")}, "ner/BC5CDR-IOB/{train,test}.tsv"),
    "ncbi_disease": EvalSetSpec("ncbi_disease", "https://github.com/cambridgeltl/MTL-Bioinformatics-2016", {
        f"ner/NCBI-disease-IOB/{s}.tsv":
            f"{_GH}/cambridgeltl/MTL-Bioinformatics-2016/master/data/NCBI-disease-IOB/{s}.tsv"
        for s in ("train", "test")}, "ner/NCBI-disease-IOB/{train,test}.tsv"),
    "chemprot": EvalSetSpec("chemprot", "https://biocreative.bioinformatics.udel.edu/tasks/biocreative-vi/track-5/", {},
                            "ChemProt as JSON lines with << >> / [[ ]] marks -> chemprot/{train,test}.txt"),
    "medication_status": EvalSetSpec("medication_status", "https://huggingface.co/datasets/mitclinicalml/clinical-ie", {},
                                     "Agrawal et al. 2022 medication status (gated) converted to JSON -> "
                                     "clinical_ie/medication_status_{dev,test}.json"),
    "coreference": EvalSetSpec("coreference", "https://huggingface.co/datasets/mitclinicalml/clinical-ie", {},
                               "Agrawal et al. 2022 coreference (gated) converted to JSON -> "
                               "clinical_ie/coreference_{dev,test}.json"),
    "mts_dialog": EvalSetSpec("mts_dialog", "https://github.com/abachaa/MTS-Dialog", {
        f"mts_dialog/MTS-Dialog-{n}.csv": f"{_GH}/abachaa/MTS-Dialog/main/Main-Dataset/MTS-Dialog-{n}.csv"
        for n in ("TestSet-1-MEDIQA-Chat-2023", "TrainingSet")}, "mts_dialog/MTS-Dialog-*.csv"),
    "icliniq": EvalSetSpec("icliniq", "https://github.com/xzhang97666/AlpaCare", {},
                           "iCliniq questions with GPT-4 references -> icliniq/iCliniq_gpt4_reference.jsonl"),
    "meqsum": EvalSetSpec("meqsum", "https://github.com/abachaa/MeQSum", {
        "meqsum/MeQSum_ground_truth_summaries.xlsx":
            "https://github.com/abachaa/MeQSum/raw/master/MeQSum_ground_truth_summaries.xlsx"},
        "meqsum/*.xlsx"),
}


def _records(exs: list[Any]) -> Any:
    for e in exs:
        yield e.id, {"id": e.id, "example": json.dumps(e.to_json(), ensure_ascii=False)}


def _make_builder(spec: EvalSetSpec) -> type[common.SourceFileBuilder]:
    class _Builder(common.SourceFileBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            f"Put the files in manual_dir laid out like ../shared/data: {spec.manual}. "
            f"Checksum: {spec.checksum}.")

        def _info(self) -> tfds.core.DatasetInfo:
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({"id": tfds.features.Text(),
                                                     "example": tfds.features.Text()}),
                homepage=spec.homepage,
                description=f"Evaluation set for task {spec.task!r}; example = JSON of eval.loaders.Example.")

        def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
            root = pathlib.Path(dl_manager.manual_dir)
            missing = {rel: url for rel, url in spec.urls.items() if not (root / rel).exists()}
            if missing:  # public URLs: fetch into a copy of the layout
                got = dl_manager.download(missing)
                root = pathlib.Path(self.data_dir).parent / f"{spec.task}_raw"
                for rel, path in got.items():
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, root / rel)
                for rel in spec.urls.keys() - missing.keys():
                    shutil.copy(pathlib.Path(dl_manager.manual_dir) / rel, root / rel)
            return {k: self._generate_examples(v) for k, v in split_examples(spec.task, str(root)).items()}

        def _generate_examples(self, examples: list[Any]) -> Any:
            yield from _records(examples)

    camel = "".join(w.capitalize() for w in spec.task.split("_"))
    # a named subclass, registered with TFDS as bioinstruct_eval_<task>
    return type(f"BioinstructEval{camel}", (_Builder,), {"name": f"bioinstruct_eval_{spec.task}",
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


BUILDERS: dict[str, type[common.SourceFileBuilder]] = {}
for _name, _spec in SPECS.items():
    BUILDERS[_name] = _make_builder(_spec)
