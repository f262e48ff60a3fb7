"""The evaluation tasks, declared in one table (`TASKS`), and the lookup the commands use.

Each entry is one frozen `task_record.Task`: its data (loaders over `loaders.py`, where the files
come from), its prompt (`task_kinds` input style and instruction), its answer kind, its metric
families (`metric_registry`), its generation budget with the reason, and whether it is one of
the paper's tasks. `get_task(spec)` returns a record by name, or builds one for
`jsonl:PATH[:METRIC]` (a user's instruction/input/output file scored by a free-text metric).
Adding a task is one entry here (plus a loader in `loaders.py` for a new file format).
"""

from __future__ import annotations

import functools
import pathlib
import random
from typing import Callable

from bioinstruct_jax.eval import loaders, metric_registry, parsing
from bioinstruct_jax.eval.loaders import Example
from bioinstruct_jax.eval.task_kinds import MTS_SECTIONS  # noqa: F401  (the section names, used by jobs.tuning_mix)
from bioinstruct_jax.eval.task_record import GEN, IE, QA, USER, DataHome, DataSource, Task  # noqa: F401

# ----------------------------------------------------------------------------- loaders of several files


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


def _split(key: str, rel: str, fn: Callable[..., list[Example]], test: str, train: str) -> dict[str, Callable]:
    """The test and train loaders of a task whose splits are two files under `rel`."""
    return {"test": _file(key, f"{rel}/{test}", fn), "train": _file(f"{key}.train", f"{rel}/{train}", fn)}


CHEMPROT_LABELS = ("ACTIVATOR", "AGONIST", "AGONIST-ACTIVATOR", "AGONIST-INHIBITOR", "ANTAGONIST",
                   "DOWNREGULATOR", "INDIRECT-DOWNREGULATOR", "INDIRECT-UPREGULATOR", "INHIBITOR",
                   "PRODUCT-OF", "SUBSTRATE", "SUBSTRATE_PRODUCT-OF", "UPREGULATOR")

MCQA_INSTRUCTION = ("Answer the following multiple-choice question about medicine. "
                    "Reply with the letter of the correct option.")
_GH = "https://raw.githubusercontent.com"
_MTL = f"{_GH}/cambridgeltl/MTL-Bioinformatics-2016/master/data"
_CLINICAL_IE = "https://huggingface.co/datasets/mitclinicalml/clinical-ie"

# Shared settings of a kind of task: zero-shot QA scored by accuracy (and log-likelihood), one-shot
# NER scored by entity F1, one-shot free text scored by ROUGE and BLEU.
_QA = dict(category=QA, input_style="question", answer="choice", metrics=("accuracy", "loglik_accuracy"),
           max_new_tokens=32, budget_reason="a letter or label, its option text and a short cue",
           headline="accuracy", default_shots=0, paper=True)
_NER = dict(category=IE, input_style="sentence", answer="entities", metrics=("entity_f1",), max_new_tokens=128,
            budget_reason="every mention in one sentence, comma-separated", headline="f1", default_shots=1)
_GEN = dict(category=GEN, answer="text", metrics=("rouge", "bleu"), headline="rougeL", default_shots=1)


def _ner(name: str, folder: str, types: tuple[str, ...], what: str) -> Task:
    return Task(name, instruction=f"List all {what} mentioned in the sentence, separated by commas. "
                "Reply None if there are none.", **_split(name, f"ner/{folder}", loaders.load_iob, "test.tsv", "train.tsv"),
                entity_types=types, description=f"{folder} test, entity-level F1",
                source=DataHome("https://github.com/cambridgeltl/MTL-Bioinformatics-2016", f"ner/{folder}/{{train,test}}.tsv",
                                {f"ner/{folder}/{s}.tsv": f"{_MTL}/{folder}/{s}.tsv" for s in ("train", "test")}),
                **_NER)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("medqa", instruction=MCQA_INSTRUCTION, description="MedQA-USMLE 4 options, test (1,273)",
         **_split("medqa", "medqa", loaders.load_medqa, "US_4_options_test.jsonl", "US_4_options_train.jsonl"),
         source=DataHome("https://github.com/jind11/MedQA",
                         "From the MedQA repository's Google Drive folder: data_clean/questions/US/4_options/"
                         "phrases_no_exclude_{test,train}.jsonl -> medqa/US_4_options_{test,train}.jsonl"), **_QA),
    Task("medmcqa", instruction=MCQA_INSTRUCTION, description="MedMCQA dev (4,183)",
         **_split("medmcqa", "medmcqa", loaders.load_medmcqa, "dev.json", "train.json"),
         source=DataHome("https://medmcqa.github.io",
                         "https://drive.google.com/uc?export=download&id=15VkJdq5eyWIkfb_aoD3oS8i4tScbHYky "
                         "(zip) -> medmcqa/dev.json and medmcqa/train.json"), **_QA),
    Task("pubmedqa", instruction="Answer the research question using the abstract. Reply with yes, no or maybe.",
         test=_pubmedqa_test, train=_pubmedqa_train, description="PubMedQA PQA-L test (500)",
         labels=parsing.YES_NO_MAYBE, parser=parsing.parse_yes_no, context_name="Abstract",
         source=DataHome("https://pubmedqa.github.io",
                         "pubmedqa/ori_pqal.json and pubmedqa/test_ground_truth.json from the PubMedQA repository",
                         {f"pubmedqa/{f}": f"{_GH}/pubmedqa/pubmedqa/master/data/{f}"
                          for f in ("ori_pqal.json", "test_ground_truth.json")}), **_QA),
    Task("bioasq", instruction="Answer the biomedical question using the snippets. Reply with yes or no.",
         test=_file("bioasq", "bioasq", loaders.load_bioasq_yesno), train=_bioasq_train,
         description="BioASQ Task B yes/no questions (618 in Task 7B-11B gold)", labels=("yes", "no"),
         parser=functools.partial(parsing.parse_yes_no, allow_maybe=False), context_name="Snippets",
         source=DataHome("http://participants-area.bioasq.org",
                         "BioASQ Task B gold files (registration needed) -> bioasq/Task*BGoldenEnriched/*golden*.json"),
         **_QA),
    Task("mednli", instruction=("Decide whether the hypothesis follows from the premise. "
                                "Reply with entailment, contradiction or neutral."),
         **_split("mednli", "mednli", loaders.load_mednli, "mli_test_v1.jsonl", "mli_train_v1.jsonl"),
         description="MedNLI test (local files only)", labels=parsing.NLI_LABELS, parser=parsing.parse_nli,
         context_name="Premise", text_name="Hypothesis",
         source=DataHome("https://physionet.org/content/mednli/",
                         "Credentialed PhysioNet access -> mednli/mli_{test,train}_v1.jsonl"), **_QA),
    _ner("bc5cdr", "BC5CDR-IOB", ("Chemical", "Disease"), "chemicals and diseases"),
    _ner("ncbi_disease", "NCBI-disease-IOB", ("Disease",), "diseases"),
    Task("chemprot", IE, "Classify the relation between the chemical marked << >> and the gene or protein marked "
         "[[ ]] in the sentence. Reply with one label from: " + ", ".join(CHEMPROT_LABELS) + ".",
         **_split("chemprot", "chemprot", loaders.load_chemprot, "test.txt", "train.txt"),
         input_style="question", answer="choice", metrics=("label_f1", "accuracy", "loglik_accuracy", "loglik_f1"),
         max_new_tokens=16, budget_reason="one relation label", headline="f1", default_shots=1,
         description="ChemProt test, relation label micro-F1", labels=CHEMPROT_LABELS, text_name="Sentence",
         source=DataHome("https://biocreative.bioinformatics.udel.edu/tasks/biocreative-vi/track-5/",
                         "ChemProt as JSON lines with << >> / [[ ]] marks -> chemprot/{train,test}.txt")),
    Task("medication_status", IE, "List every medication in the clinical note with its status "
         "(active, discontinued or neither), one per line as medication: status.",
         **_split("medication_status", "clinical_ie", loaders.load_medication_status,
                  "medication_status_test.json", "medication_status_dev.json"),
         input_style="clinical_note", answer="medication", metrics=("medication",), max_new_tokens=128,
         budget_reason="one `medication: status` line per medication in a note", headline="f1", default_shots=1,
         description="Agrawal et al. 2022 medication status (local file)", paper=True,
         source=DataHome(_CLINICAL_IE, "Agrawal et al. 2022 medication status (gated) converted to JSON -> "
                         "clinical_ie/medication_status_{dev,test}.json")),
    Task("coreference", IE, "Find the noun phrase that the pronoun refers to in the clinical text. "
         "Reply with the antecedent only.",
         **_split("coreference", "clinical_ie", loaders.load_coreference, "coreference_test.json", "coreference_dev.json"),
         input_style="pronoun", answer="span", metrics=("token_f1",), max_new_tokens=32,
         budget_reason="one noun phrase", headline="f1", default_shots=1,
         description="Agrawal et al. 2022 coreference (local file)", paper=True,
         source=DataHome(_CLINICAL_IE, "Agrawal et al. 2022 coreference (gated) converted to JSON -> "
                         "clinical_ie/coreference_{dev,test}.json")),
    Task("mts_dialog", instruction="Write the {section} section of the clinical note for the following "
         "doctor-patient conversation.",
         **_split("mts_dialog", "mts_dialog", loaders.load_mts_dialog, "MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv",
                  "MTS-Dialog-TrainingSet.csv"),
         input_style="section_text", max_new_tokens=384, budget_reason="one section of a clinical note",
         input_name="Conversation", description="MTS-Dialog test set 1 = MEDIQA-Chat 2023 task A (200)", paper=True,
         source=DataHome("https://github.com/abachaa/MTS-Dialog", "mts_dialog/MTS-Dialog-*.csv",
                         {f"mts_dialog/MTS-Dialog-{n}.csv": f"{_GH}/abachaa/MTS-Dialog/main/Main-Dataset/MTS-Dialog-{n}.csv"
                          for n in ("TestSet-1-MEDIQA-Chat-2023", "TrainingSet")}), **_GEN),
    Task("icliniq", instruction="Answer the patient's question as a doctor would.",
         test=_seeded("icliniq", "icliniq/iCliniq_gpt4_reference.jsonl", loaders.load_instruction_jsonl, ICLINIQ_N, 0),
         train=_seeded("icliniq", "icliniq/iCliniq_gpt4_reference.jsonl", loaders.load_instruction_jsonl, ICLINIQ_N, 1),
         input_style="text", max_new_tokens=384, budget_reason="a doctor's answer of a few paragraphs",
         input_name="Patient", description=f"iCliniq, {ICLINIQ_N} questions drawn with seed {SPLIT_SEED}", paper=True,
         source=DataHome("https://github.com/xzhang97666/AlpaCare",
                         "iCliniq questions with GPT-4 references -> icliniq/iCliniq_gpt4_reference.jsonl"), **_GEN),
    Task("meqsum", instruction="Summarize the consumer health question as one short question.",
         test=_seeded("meqsum", "meqsum", loaders.load_meqsum, MEQSUM_N, 0),
         train=_seeded("meqsum", "meqsum", loaders.load_meqsum, MEQSUM_N, 1),
         input_style="text", max_new_tokens=64, budget_reason="one short question", input_name="Question",
         description=f"MeQSum, {MEQSUM_N} test questions drawn with seed {SPLIT_SEED}",
         source=DataHome("https://github.com/abachaa/MeQSum", "meqsum/*.xlsx",
                         {"meqsum/MeQSum_ground_truth_summaries.xlsx":
                          "https://github.com/abachaa/MeQSum/raw/master/MeQSum_ground_truth_summaries.xlsx"}), **_GEN),
)}

TASK_NAMES = tuple(TASKS)
PAPER_TASKS = tuple(n for n, t in TASKS.items() if t.paper)


def paper_groups() -> dict[str, tuple[str, ...]]:
    """The paper's evaluation groups (qa / ie / gen) and their tasks, in table order."""
    out: dict[str, tuple[str, ...]] = {}
    for name in PAPER_TASKS:
        out[TASKS[name].category] = out.get(TASKS[name].category, ()) + (name,)
    return out


TEXT_METRICS = metric_registry.free_text_names()


def user_task(spec: str) -> Task:
    """`jsonl:PATH:METRIC` (METRIC one of TEXT_METRICS; default rouge): instruction/input/output
    records, each record's own instruction used; a one-shot example is drawn (seeded) from the
    same file and left out of the scored set."""
    body = spec[len("jsonl:"):]
    path, _, metric = body.rpartition(":") if body.rsplit(":", 1)[-1] in TEXT_METRICS else (body, "", "rouge")
    if not path:
        raise ValueError(f"task spec {spec!r}: expected jsonl:PATH[:METRIC]")
    chosen = metric_registry.family(metric)

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

    return Task(f"user_{pathlib.Path(path).stem}", USER, "Respond to the input.", test=split(0), train=split(1),
                input_style="own_instruction", answer="text", metrics=chosen.user_metrics or (metric,),
                max_new_tokens=256, budget_reason="a free-text reply", headline=chosen.headline or metric,
                default_shots=0, description=f"user task {path} ({metric})")


def get_task(spec: str) -> Task:
    if spec.startswith("jsonl:"):
        return user_task(spec)
    if spec not in TASKS:
        raise ValueError(f"unknown task {spec!r}; known: {', '.join(TASKS)} or jsonl:PATH:METRIC")
    return TASKS[spec]


def parse_task_list(text: str) -> list[str]:
    """Comma-separated task list; `all` = every built-in task, `paper` = the paper's."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        out += list(TASK_NAMES) if part == "all" else list(PAPER_TASKS) if part == "paper" else [part]
    return out
