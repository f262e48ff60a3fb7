"""Evaluation tasks: where each task's data lives, its instruction, prompt, answer parsing, metrics.

A task turns `Example`s (from `loaders.py`) into prompts in the training template
(`bioinstruct_jax.data.templates.format_prompt`), reads the model's replies back with
`parsing.py`, and scores whole prediction files with `metrics.py`. `get_task(spec, data)` builds
a task from a name (`medqa`, ..., or `jsonl:PATH:METRIC`).
"""

from __future__ import annotations

import abc
import dataclasses
import pathlib
import random
import statistics
from typing import Any, Callable, Sequence

from bioinstruct_jax.data.templates import DEFAULT_TEMPLATE, render_prompt
from bioinstruct_jax.eval import loaders, metrics, parsing
from bioinstruct_jax.eval.loaders import Example

QA, IE, GEN, USER = "qa", "ie", "gen", "user"
CONTEXT_CHARS = 6000  # supporting text (abstract, snippets) is cut to this many characters


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


class Task(abc.ABC):
    """Base class. Subclasses set the kind-specific prompt parts and must implement `parse` and
    `score`."""

    kind = "base"

    def __init__(self, name: str, category: str, instruction: str, *,
                 test: Callable[[DataSource], list[Example]],
                 train: Callable[[DataSource], list[Example]] | None,
                 default_shots: int, max_new_tokens: int, headline: str, description: str = ""):
        self.name = name
        self.category = category
        self.instruction = instruction
        self._test = test
        self._train = train
        self.default_shots = default_shots
        self.max_new_tokens = max_new_tokens
        self.headline = headline
        self.description = description

    # data ------------------------------------------------------------------------------------
    def load(self, data: DataSource) -> list[Example]:
        return self._test(data)

    @property
    def has_train(self) -> bool:
        """Whether the task has a training split (the one-shot pool)."""
        return self._train is not None

    def load_train(self, data: DataSource) -> list[Example]:
        """The training split (the one-shot pool); ValueError when the task has none."""
        if self._train is None:
            raise ValueError(f"task {self.name!r} has no training split for a one-shot example")
        return self._train(data)

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
        return self.instruction

    def format_input(self, ex: Example) -> str:
        return ex.text

    def format_target(self, ex: Example) -> str:
        return str(ex.answer)

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
        return ex.answer

    @abc.abstractmethod
    def parse(self, text: str, ex: Example) -> Any:
        """The prediction read from the model's reply `text` to `ex` (None when unreadable)."""

    def choices(self, ex: Example) -> list[tuple[str, str]] | None:
        """(answer, continuation) pairs for log-likelihood scoring; None = not a choice task."""
        return None

    @abc.abstractmethod
    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Metrics {name: value} over a whole prediction file's records."""


class ChoiceTask(Task):
    """Multiple choice (letters) or a closed label set; accuracy or micro-F1."""

    kind = "choice"

    def __init__(self, *args: Any, labels: Sequence[str] | None = None,
                 parser: Callable[[str], str | None] | None = None, micro_f1: bool = False,
                 **kw: Any):
        super().__init__(*args, **kw)
        self.labels = tuple(labels) if labels else None  # None -> lettered options
        self.parser = parser
        self.micro_f1 = micro_f1

    def format_input(self, ex: Example) -> str:
        parts = []
        if ex.context:
            ctx = ex.context if len(ex.context) <= CONTEXT_CHARS else ex.context[:CONTEXT_CHARS] + " ..."
            parts.append(f"{self.context_name}:\n{ctx}\n")
        parts.append(f"{self.text_name}: {ex.text}")
        if ex.options:
            parts.append("Options:\n" + "\n".join(f"{k}. {v}" for k, v in ex.options.items()))
        return "\n".join(parts)

    context_name = "Context"
    text_name = "Question"

    def format_target(self, ex: Example) -> str:
        if ex.options:
            return f"{ex.answer}. {ex.options[ex.answer]}"
        return str(ex.answer)

    def parse(self, text: str, ex: Example) -> str | None:
        if ex.options:
            return parsing.parse_mcqa(text, ex.options)
        if self.parser is not None:
            return self.parser(text)
        return parsing.parse_label(text, self.labels or ())

    def choices(self, ex: Example) -> list[tuple[str, str]]:
        if ex.options:
            return [(k, f"{k}. {v}") for k, v in ex.options.items()]
        return [(l, l) for l in self.labels or ()]

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        golds = [r["gold"] for r in records]
        if records and "generation" in records[0]:
            preds = [r["pred"] for r in records]
            if self.micro_f1:
                out.update(metrics.micro_prf_labels(preds, golds))
            out["accuracy"] = metrics.accuracy(preds, golds)
        if records and "loglik" in records[0]:
            out["loglik_accuracy"] = metrics.accuracy([r["loglik_pred"] for r in records], golds)
            out["loglik_accuracy_norm"] = metrics.accuracy(
                [r["loglik_pred_norm"] for r in records], golds)
            if self.micro_f1:
                out["loglik_f1"] = metrics.micro_prf_labels(
                    [r["loglik_pred"] for r in records], golds)["f1"]
        return out


class EntityTask(Task):
    """NER as generation of a mention list; entity-level micro P/R/F1 (type-agnostic)."""

    kind = "entities"

    def __init__(self, *args: Any, types: Sequence[str], **kw: Any):
        super().__init__(*args, **kw)
        self.types = set(types)

    def format_input(self, ex: Example) -> str:
        return f"Sentence: {ex.text}"

    def gold(self, ex: Example) -> list[str]:
        return [m for m, t in ex.answer if t in self.types]

    def format_target(self, ex: Example) -> str:
        return ", ".join(self.gold(ex)) or "None"

    def parse(self, text: str, ex: Example) -> list[str] | None:
        return parsing.parse_list(text)

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return metrics.entity_prf([r["pred"] for r in records], [r["gold"] for r in records])


class MedicationTask(Task):
    """Agrawal et al. 2022 medication status: P/R/F1 of extraction + conditional accuracy."""

    kind = "medication"

    def format_input(self, ex: Example) -> str:
        return f"Clinical note: {ex.text}"

    def format_target(self, ex: Example) -> str:
        return "\n".join(f"{m}: {s}" for m, s in ex.answer) or "None"

    def parse(self, text: str, ex: Example) -> list[list[str]] | None:
        got = parsing.parse_medication_status(text)
        return None if got is None else [list(x) for x in got]

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return metrics.medication_status_scores(
            [None if r["pred"] is None else [tuple(x) for x in r["pred"]] for r in records],
            [[tuple(x) for x in r["gold"]] for r in records])


class SpanTask(Task):
    """Short-span answers (coreference antecedents); token-level P/R/F1."""

    kind = "span"

    def format_input(self, ex: Example) -> str:
        return f"Clinical text: {ex.text}\nPronoun: {ex.meta.get('pronoun', '')}"

    def parse(self, text: str, ex: Example) -> str | None:
        return parsing.parse_span(text)

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return metrics.token_prf([r["pred"] for r in records], [r["gold"] for r in records])


TEXT_METRICS = ("rouge", "bleu", "exact_match", "token_f1", "entity_f1")


class TextTask(Task):
    """Free text against a reference: ROUGE-1/2/L + BLEU (the GPT-4 judge is added by the runner),
    or, for user tasks, the chosen metric."""

    kind = "text"

    def __init__(self, *args: Any, input_name: str = "", metric: str = "rouge",
                 per_example_instruction: bool = False, **kw: Any):
        super().__init__(*args, **kw)
        if metric not in TEXT_METRICS:
            raise ValueError(f"task {self.name!r}: metric {metric!r} not one of {TEXT_METRICS}")
        self.input_name = input_name
        self.metric = metric
        self.per_example_instruction = per_example_instruction

    def instruction_for(self, ex: Example) -> str:
        if self.per_example_instruction and ex.meta.get("instruction"):
            return ex.meta["instruction"]
        return self.instruction

    def format_input(self, ex: Example) -> str:
        return f"{self.input_name}:\n{ex.text}" if self.input_name else ex.text

    def parse(self, text: str, ex: Example) -> str | None:
        text = (text or "").strip()
        return text or None

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        preds = [r["pred"] for r in records]
        golds = [r["gold"] for r in records]
        if self.metric in ("rouge", "bleu"):
            out = metrics.rouge([p or "" for p in preds], golds)
            out["bleu"] = metrics.bleu([p or "" for p in preds], golds)
            return out
        if self.metric == "exact_match":
            return {"exact_match": metrics.exact_match(preds, golds)}
        if self.metric == "token_f1":
            return metrics.token_prf(preds, golds)
        return metrics.entity_prf([parsing.parse_list(p or "") for p in preds],
                                  [parsing.parse_list(g) or [] for g in golds])


# MTS-Dialog's section codes (`section_header`) and the note sections they stand for (the dataset's
# documentation, Ben Abacha et al. 2023). Each reference is one section, so the prompt names it.
MTS_SECTIONS = {
    "GENHX": "history of present illness", "CC": "chief complaint", "FAM/SOCHX": "family and social history",
    "PASTMEDICALHX": "past medical history", "PASTSURGICAL": "past surgical history", "ALLERGY": "allergies",
    "ROS": "review of systems", "MEDICATIONS": "medications", "ASSESSMENT": "assessment",
    "EXAM": "physical examination", "DIAGNOSIS": "diagnosis", "DISPOSITION": "disposition", "PLAN": "plan",
    "EDCOURSE": "emergency department course", "IMMUNIZATIONS": "immunizations", "IMAGING": "imaging",
    "GYNHX": "gynecologic history", "PROCEDURES": "procedures", "OTHER_HISTORY": "other history",
    "LABS": "laboratory results",
}


class SectionNoteTask(TextTask):
    """Conversation to one note section: the instruction names the section (`{section}`) the
    reference is, from the example's `section_header` (an unknown code is used as written)."""

    def instruction_for(self, ex: Example) -> str:
        code = str(ex.meta.get("section_header", "")).strip()
        name = MTS_SECTIONS.get(code.upper(), code.lower().replace("_", " ") or "requested")
        return self.instruction.format(section=name)


# ----------------------------------------------------------------------------- data wiring


def _pubmedqa_test(d: DataSource) -> list[Example]:
    if "pubmedqa" in d.paths:
        return loaders.load_pubmedqa(d.paths["pubmedqa"])
    folder = d.resolve("pubmedqa.dir", "pubmedqa")
    if (folder / "ori_pqal.json").exists() and (folder / "test_ground_truth.json").exists():
        return loaders.load_pubmedqa(folder / "ori_pqal.json", ground_truth=folder / "test_ground_truth.json")
    return loaders.load_pubmedqa(folder / "test_set.json")


def _pubmedqa_train(d: DataSource) -> list[Example]:
    if "pubmedqa.train" in d.paths:
        return loaders.load_pubmedqa(d.paths["pubmedqa.train"])
    folder = d.resolve("pubmedqa.dir", "pubmedqa")
    return loaders.load_pubmedqa(folder / "ori_pqal.json", exclude=folder / "test_ground_truth.json")


def _bioasq_train(d: DataSource) -> list[Example]:
    test_ids = {e.id for e in loaders.load_bioasq_yesno(d.resolve("bioasq", "bioasq"))}
    train = loaders.load_bioasq_yesno(d.resolve("bioasq.train", "bioasq/training.json"),
                                      pattern="*.json")
    return [e for e in train if e.id not in test_ids]


def _file(key: str, rel: str | None, fn: Callable[..., list[Example]]) -> Callable[[DataSource], list[Example]]:
    return lambda d: fn(d.resolve(key, rel))


ICLINIQ_N, MEQSUM_N, SPLIT_SEED = 100, 400, 0


def _seeded(key: str, rel: str, fn: Callable[..., list[Example]], n: int, part: int) -> Callable[[DataSource], list[Example]]:
    """Seeded test/shot-pool split of one file; a file of <= n records keeps one for the pool."""
    def f(d: DataSource) -> list[Example]:
        exs = fn(d.resolve(key, rel))
        return loaders.seeded_split(exs, min(n, max(0, len(exs) - 1)), SPLIT_SEED)[part]
    return f


CHEMPROT_LABELS = ("ACTIVATOR", "AGONIST", "AGONIST-ACTIVATOR", "AGONIST-INHIBITOR", "ANTAGONIST",
                   "DOWNREGULATOR", "INDIRECT-DOWNREGULATOR", "INDIRECT-UPREGULATOR", "INHIBITOR",
                   "PRODUCT-OF", "SUBSTRATE", "SUBSTRATE_PRODUCT-OF", "UPREGULATOR")

MCQA_INSTRUCTION = ("Answer the following multiple-choice question about medicine. "
                    "Reply with the letter of the correct option.")


def _qa(name: str, cls_kw: dict[str, Any], **kw: Any) -> ChoiceTask:
    return ChoiceTask(name, QA, default_shots=0, max_new_tokens=32, headline="accuracy", **kw, **cls_kw)


def _builtin_tasks() -> dict[str, Callable[[], Task]]:
    def medqa() -> Task:
        return _qa("medqa", {}, instruction=MCQA_INSTRUCTION,
                   test=_file("medqa", "medqa/US_4_options_test.jsonl", loaders.load_medqa),
                   train=_file("medqa.train", "medqa/US_4_options_train.jsonl", loaders.load_medqa),
                   description="MedQA-USMLE 4 options, test (1,273)")

    def medmcqa() -> Task:
        return _qa("medmcqa", {}, instruction=MCQA_INSTRUCTION,
                   test=_file("medmcqa", "medmcqa/dev.json", loaders.load_medmcqa),
                   train=_file("medmcqa.train", "medmcqa/train.json", loaders.load_medmcqa),
                   description="MedMCQA dev (4,183)")

    def pubmedqa() -> Task:
        t = _qa("pubmedqa", {"labels": parsing.YES_NO_MAYBE, "parser": parsing.parse_yes_no},
                instruction="Answer the research question using the abstract. Reply with yes, no or maybe.",
                test=_pubmedqa_test, train=_pubmedqa_train, description="PubMedQA PQA-L test (500)")
        t.context_name = "Abstract"
        return t

    def bioasq() -> Task:
        t = _qa("bioasq", {"labels": ("yes", "no"),
                           "parser": lambda s: parsing.parse_yes_no(s, allow_maybe=False)},
                instruction="Answer the biomedical question using the snippets. Reply with yes or no.",
                test=_file("bioasq", "bioasq", loaders.load_bioasq_yesno), train=_bioasq_train,
                description="BioASQ Task B yes/no questions (618 in Task 7B-11B gold)")
        t.context_name = "Snippets"
        return t

    def mednli() -> Task:
        t = _qa("mednli", {"labels": parsing.NLI_LABELS, "parser": parsing.parse_nli},
                instruction=("Decide whether the hypothesis follows from the premise. "
                             "Reply with entailment, contradiction or neutral."),
                test=_file("mednli", "mednli/mli_test_v1.jsonl", loaders.load_mednli),
                train=_file("mednli.train", "mednli/mli_train_v1.jsonl", loaders.load_mednli),
                description="MedNLI test (local files only)")
        t.context_name, t.text_name = "Premise", "Hypothesis"
        return t

    def ner(name: str, folder: str, types: tuple[str, ...], what: str) -> Task:
        return EntityTask(name, IE,
                          f"List all {what} mentioned in the sentence, separated by commas. "
                          "Reply None if there are none.",
                          test=_file(name, f"ner/{folder}/test.tsv", loaders.load_iob),
                          train=_file(f"{name}.train", f"ner/{folder}/train.tsv", loaders.load_iob),
                          default_shots=1, max_new_tokens=128, headline="f1", types=types,
                          description=f"{folder} test, entity-level F1")

    def chemprot() -> Task:
        return ChoiceTask("chemprot", IE,
                          "Classify the relation between the chemical marked << >> and the gene or "
                          "protein marked [[ ]] in the sentence. Reply with one label from: "
                          + ", ".join(CHEMPROT_LABELS) + ".",
                          test=_file("chemprot", "chemprot/test.txt", loaders.load_chemprot),
                          train=_file("chemprot.train", "chemprot/train.txt", loaders.load_chemprot),
                          default_shots=1, max_new_tokens=16, headline="f1",
                          labels=CHEMPROT_LABELS, micro_f1=True,
                          description="ChemProt test, relation label micro-F1")

    def chemprot_input(t: ChoiceTask) -> ChoiceTask:
        t.text_name = "Sentence"
        return t

    def medication_status() -> Task:
        return MedicationTask("medication_status", IE,
                              "List every medication in the clinical note with its status "
                              "(active, discontinued or neither), one per line as medication: status.",
                              test=_file("medication_status", "clinical_ie/medication_status_test.json",
                                         loaders.load_medication_status),
                              train=_file("medication_status.train", "clinical_ie/medication_status_dev.json",
                                          loaders.load_medication_status),
                              default_shots=1, max_new_tokens=128, headline="f1",
                              description="Agrawal et al. 2022 medication status (local file)")

    def coreference() -> Task:
        return SpanTask("coreference", IE,
                        "Find the noun phrase that the pronoun refers to in the clinical text. "
                        "Reply with the antecedent only.",
                        test=_file("coreference", "clinical_ie/coreference_test.json", loaders.load_coreference),
                        train=_file("coreference.train", "clinical_ie/coreference_dev.json", loaders.load_coreference),
                        default_shots=1, max_new_tokens=32, headline="f1",
                        description="Agrawal et al. 2022 coreference (local file)")

    def mts_dialog() -> Task:
        return SectionNoteTask("mts_dialog", GEN,
                        "Write the {section} section of the clinical note for the following "
                        "doctor-patient conversation.",
                        test=_file("mts_dialog", "mts_dialog/MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv",
                                   loaders.load_mts_dialog),
                        train=_file("mts_dialog.train", "mts_dialog/MTS-Dialog-TrainingSet.csv",
                                    loaders.load_mts_dialog),
                        default_shots=1, max_new_tokens=384, headline="rougeL", input_name="Conversation",
                        description="MTS-Dialog test set 1 = MEDIQA-Chat 2023 task A (200)")

    def icliniq() -> Task:
        rel = "icliniq/iCliniq_gpt4_reference.jsonl"
        return TextTask("icliniq", GEN,
                        "Answer the patient's question as a doctor would.",
                        test=_seeded("icliniq", rel, loaders.load_instruction_jsonl, ICLINIQ_N, 0),
                        train=_seeded("icliniq", rel, loaders.load_instruction_jsonl, ICLINIQ_N, 1),
                        default_shots=1, max_new_tokens=384, headline="rougeL", input_name="Patient",
                        description=f"iCliniq, {ICLINIQ_N} questions drawn with seed {SPLIT_SEED}")

    def meqsum() -> Task:
        return TextTask("meqsum", GEN,
                        "Summarize the consumer health question as one short question.",
                        test=_seeded("meqsum", "meqsum", loaders.load_meqsum, MEQSUM_N, 0),
                        train=_seeded("meqsum", "meqsum", loaders.load_meqsum, MEQSUM_N, 1),
                        default_shots=1, max_new_tokens=64, headline="rougeL", input_name="Question",
                        description=f"MeQSum, {MEQSUM_N} test questions drawn with seed {SPLIT_SEED}")

    return {
        "medqa": medqa, "medmcqa": medmcqa, "pubmedqa": pubmedqa, "bioasq": bioasq, "mednli": mednli,
        "bc5cdr": lambda: ner("bc5cdr", "BC5CDR-IOB", ("Chemical", "Disease"), "chemicals and diseases"),
        "ncbi_disease": lambda: ner("ncbi_disease", "NCBI-disease-IOB", ("Disease",), "diseases"),
        "chemprot": lambda: chemprot_input(chemprot()),
        "medication_status": medication_status, "coreference": coreference,
        "mts_dialog": mts_dialog, "icliniq": icliniq, "meqsum": meqsum,
    }


TASK_NAMES = tuple(_builtin_tasks())
PAPER_TASKS = ("medqa", "medmcqa", "pubmedqa", "bioasq", "mednli", "medication_status",
               "coreference", "mts_dialog", "icliniq")


def user_task(spec: str) -> TextTask:
    """`jsonl:PATH:METRIC` (METRIC in TEXT_METRICS; default rouge): instruction/input/output
    records, each record's own instruction used; a one-shot example is drawn (seeded) from the
    same file and left out of the scored set."""
    body = spec[len("jsonl:"):]
    path, _, metric = body.rpartition(":") if body.rsplit(":", 1)[-1] in TEXT_METRICS else (body, "", "rouge")
    if not path:
        raise ValueError(f"task spec {spec!r}: expected jsonl:PATH[:METRIC]")
    name = f"user_{pathlib.Path(path).stem}"

    def split(part: int) -> Callable[[DataSource], list[Example]]:
        def f(d: DataSource) -> list[Example]:
            exs = loaders.load_instruction_jsonl(path)
            if not exs:
                raise loaders.FormatError(f"{path}: no records (expected JSON lines or a JSON list of "
                                          "objects with input and output)")
            if len(exs) < 2:
                return exs if part == 0 else []
            held = random.Random(SPLIT_SEED).randrange(len(exs))
            return [e for i, e in enumerate(exs) if (i != held) == (part == 0)]
        return f

    return TextTask(name, USER, "Respond to the input.", test=split(0), train=split(1),
                    default_shots=0, max_new_tokens=256, headline=metric if metric != "rouge" else "rougeL",
                    metric=metric, per_example_instruction=True,
                    description=f"user task {path} ({metric})")


def get_task(spec: str) -> Task:
    if spec.startswith("jsonl:"):
        t = user_task(spec)
        if t.metric in ("token_f1", "entity_f1"):
            t.headline = "f1"
        return t
    tasks = _builtin_tasks()
    if spec not in tasks:
        raise ValueError(f"unknown task {spec!r}; known: {', '.join(tasks)} or jsonl:PATH:METRIC")
    return tasks[spec]()


def parse_task_list(text: str) -> list[str]:
    """Comma-separated task list; `all` = every built-in task, `paper` = the paper's."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        out += list(TASK_NAMES) if part == "all" else list(PAPER_TASKS) if part == "paper" else [part]
    return out
