"""Raw evaluation files -> lists of `Example` records (one parser per published format).

Every function reads one local file (or folder) in the format its dataset is published in and
returns plain `Example`s; prompts, parsing and scoring live elsewhere (`tasks.py`). The TFDS
builders in `bioinstruct_jax/eval/tfds_sets.py` and the tests call these same functions.
Nothing here downloads anything.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import glob
import io
import json
import os
import pathlib
import random
from typing import Any, Iterable, Iterator

from bioinstruct_jax.data.records import RecordError, decode_utf8

PathLike = str | os.PathLike[str]


@dataclasses.dataclass(frozen=True)
class Example:
    """One evaluation item.

    `text` is the main input (question, sentence, dialogue); `context` optional supporting text
    (PubMedQA abstract, BioASQ snippets); `options` maps letter -> option text for multiple choice;
    `answer` is the gold answer in the task's own form (letter, label, entity list, reference text,
    medication list, antecedent string).
    """

    id: str
    text: str
    answer: Any
    context: str = ""
    options: dict[str, str] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FormatError(ValueError):
    """A raw file does not have the expected format (message names file, line and key)."""


def _path(path: PathLike) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"evaluation data file not found: {p}")
    return p


def _read_text(path: PathLike) -> str:
    """A UTF-8 file's text; other bytes are a FormatError naming file, line and column."""
    p = _path(path)
    try:
        return decode_utf8(p.read_bytes(), p)
    except RecordError as e:
        raise FormatError(str(e)) from None


def _load_json(path: PathLike) -> Any:
    """A JSON file; bad JSON is a FormatError naming file, line and column."""
    p = _path(path)
    try:
        return json.loads(_read_text(p))
    except json.JSONDecodeError as e:
        raise FormatError(f"{p}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def _iter_jsonl(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    p = _path(path)
    for lineno, line in enumerate(_read_text(p).split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"{p}:{lineno}: not a JSON line ({e.msg} at column {e.colno})") from None


def _require(record: dict[str, Any], keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise FormatError(f"{where}: missing key(s) {missing}; has {sorted(record)}")


def _maybe_literal(value: Any) -> Any:
    """Some mirrors store lists as their Python repr ("['a', 'b']"); turn those back into lists."""
    if isinstance(value, str) and value[:1] in "[{" and value[-1:] in "]}":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


# ----------------------------------------------------------------------------- QA


def load_medqa(path: PathLike) -> list[Example]:
    """MedQA-USMLE JSON lines: question, options{A..}, answer (text), answer_idx (letter)."""
    out = []
    for lineno, r in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        _require(r, ("question", "options", "answer_idx"), where)
        options = {str(k): str(v) for k, v in r["options"].items()}
        if r["answer_idx"] not in options:
            raise FormatError(f"{where}: answer_idx {r['answer_idx']!r} not in options {list(options)}")
        out.append(Example(id=f"medqa-{lineno - 1}", text=r["question"], answer=r["answer_idx"],
                           options=options, meta={"meta_info": r.get("meta_info")}))
    return out


def load_medmcqa(path: PathLike) -> list[Example]:
    """MedMCQA JSON lines: question, opa..opd, cop (correct option, 1-4), id."""
    out = []
    for lineno, r in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        _require(r, ("question", "opa", "opb", "opc", "opd", "cop"), where)
        cop = int(r["cop"])
        if not 1 <= cop <= 4:
            raise FormatError(f"{where}: cop={cop} outside 1..4")
        options = {L: str(r[k]) for L, k in zip("ABCD", ("opa", "opb", "opc", "opd"))}
        out.append(Example(id=str(r.get("id") or f"medmcqa-{lineno - 1}"), text=r["question"],
                           answer="ABCD"[cop - 1], options=options,
                           meta={"subject_name": r.get("subject_name"),
                                 "choice_type": r.get("choice_type")}))
    return out


def _pubmedqa_example(pmid: str, r: dict[str, Any], label: str, where: str) -> Example:
    _require(r, ("QUESTION", "CONTEXTS"), where)
    contexts = _maybe_literal(r["CONTEXTS"])
    labels = _maybe_literal(r.get("LABELS") or [])
    if isinstance(contexts, str):
        contexts = [contexts]
    if isinstance(labels, list) and len(labels) == len(contexts):
        ctx = "\n".join(f"{lab.capitalize()}: {c}" for lab, c in zip(labels, contexts))
    else:
        ctx = "\n".join(contexts)
    if label not in ("yes", "no", "maybe"):
        raise FormatError(f"{where}: label {label!r} is not yes/no/maybe")
    return Example(id=str(pmid), text=r["QUESTION"], context=ctx, answer=label,
                   meta={"long_answer": r.get("LONG_ANSWER", ""), "contexts": [str(c) for c in contexts]})


def load_pubmedqa(path: PathLike, ground_truth: PathLike | None = None,
                  exclude: PathLike | None = None) -> list[Example]:
    """PubMedQA PQA-L: a JSON object PMID -> {QUESTION, CONTEXTS, LABELS, final_decision, ...}.

    `path` is test_set.json (500) or ori_pqal.json (1,000). With `ground_truth`
    (test_ground_truth.json, PMID -> label) only those PMIDs are kept and labelled from it; with
    `exclude` (a ground-truth file) those PMIDs are dropped (the other 500 = our shot pool).
    """
    p = _path(path)
    data = _load_json(p)
    if not isinstance(data, dict):
        raise FormatError(f"{p}: expected a JSON object keyed by PMID, got {type(data).__name__}")
    gt = _load_json(ground_truth) if ground_truth else None
    ex = set(_load_json(exclude)) if exclude else set()
    out = []
    if gt is not None:
        missing = [k for k in gt if k not in data]
        if missing:
            raise FormatError(f"{ground_truth}: {len(missing)} PMIDs not in {p} (e.g. {missing[:3]})")
        for pmid, label in gt.items():
            out.append(_pubmedqa_example(pmid, data[pmid], str(label), f"{p}[{pmid}]"))
        return out
    for pmid, r in data.items():
        if pmid in ex:
            continue
        where = f"{p}[{pmid}]"
        _require(r, ("final_decision",), where)
        out.append(_pubmedqa_example(pmid, r, str(r["final_decision"]), where))
    return out


def load_bioasq_yesno(path_or_dir: PathLike, pattern: str = "*golden*.json") -> list[Example]:
    """BioASQ Task B JSON ({"questions": [...]}) -> yes/no questions, deduplicated by id.

    Accepts one file or a folder searched recursively for `pattern` (the gold files of the
    Task{7..11}BGoldenEnriched layout); files are read in sorted order, first occurrence of an id wins.
    """
    p = _path(path_or_dir)
    files = sorted(glob.glob(str(p / "**" / pattern), recursive=True)) if p.is_dir() else [str(p)]
    if not files:
        raise FormatError(f"{p}: no BioASQ *.json files found")
    seen: set[str] = set()
    out = []
    for f in files:
        data = _load_json(f)
        if not isinstance(data, dict) or "questions" not in data:
            raise FormatError(f"{f}: expected an object with a 'questions' list")
        for i, q in enumerate(data["questions"]):
            if q.get("type") != "yesno":
                continue
            where = f"{f}:questions[{i}]"
            _require(q, ("id", "body", "exact_answer"), where)
            if q["id"] in seen:
                continue
            seen.add(q["id"])
            ans = q["exact_answer"]
            if isinstance(ans, list):
                ans = ans[0] if ans else ""
            ans = str(ans).strip().lower()
            if ans not in ("yes", "no"):
                raise FormatError(f"{where}: exact_answer {q['exact_answer']!r} is not yes/no")
            snippets = _maybe_literal(q.get("snippets") or [])
            ctx = "\n".join(s["text"] if isinstance(s, dict) else str(s) for s in snippets)
            out.append(Example(id=str(q["id"]), text=q["body"], context=ctx, answer=ans,
                               meta={"source": os.path.basename(f)}))
    return out


def load_mednli(path: PathLike) -> list[Example]:
    """MedNLI JSON lines (mli_{train,dev,test}_v1.jsonl): sentence1, sentence2, gold_label, pairID."""
    out = []
    for lineno, r in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        _require(r, ("sentence1", "sentence2", "gold_label"), where)
        label = str(r["gold_label"]).lower()
        if label not in ("entailment", "contradiction", "neutral"):
            raise FormatError(f"{where}: gold_label {label!r} not entailment/contradiction/neutral")
        out.append(Example(id=str(r.get("pairID") or f"mednli-{lineno - 1}"),
                           text=r["sentence2"], context=r["sentence1"], answer=label))
    return out


# ----------------------------------------------------------------------------- IE


def load_iob(path: PathLike) -> list[Example]:
    """`token<TAB>tag` lines, blank line between sentences (MTL-Bioinformatics-2016 *-IOB).

    The answer is the list of (mention text, type) in order; tokens are joined with one space.
    """
    p = _path(path)
    sentences: list[list[tuple[str, str]]] = [[]]
    for lineno, line in enumerate(_read_text(p).replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            if sentences[-1]:
                sentences.append([])
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise FormatError(f"{p}:{lineno}: expected token<TAB>tag, got {line!r}")
        tag = parts[-1].strip()
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise FormatError(f"{p}:{lineno}: tag {tag!r} is not O / B-X / I-X")
        sentences[-1].append((parts[0], tag))
    if not sentences[-1]:
        sentences.pop()
    out = []
    for i, sent in enumerate(sentences):
        entities: list[tuple[str, str]] = []
        cur: list[str] = []
        cur_type = ""
        for tok, tag in sent + [("", "O")]:
            if tag.startswith("I-") and cur and tag[2:] == cur_type:
                cur.append(tok)
                continue
            if cur:
                entities.append((" ".join(cur), cur_type))
                cur = []
            if tag != "O":  # B-X, or an I-X that does not continue: start a new mention
                cur, cur_type = [tok], tag[2:]
        out.append(Example(id=f"{p.stem}-{i}", text=" ".join(t for t, _ in sent),
                           answer=[list(e) for e in entities]))
    return out


def load_chemprot(path: PathLike) -> list[Example]:
    """ChemProt JSON lines: {"text" with << chemical >> and [[ gene ]] marks, "label"}."""
    out = []
    for lineno, r in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        _require(r, ("text", "label"), where)
        if "<<" not in r["text"] or "[[" not in r["text"]:
            raise FormatError(f"{where}: text lacks the << chemical >> / [[ gene ]] marks")
        out.append(Example(id=f"{pathlib.Path(path).stem}-{lineno - 1}", text=r["text"],
                           answer=str(r["label"])))
    return out


MED_STATUSES = ("active", "discontinued", "neither")


def _load_json_records(path: PathLike) -> list[dict[str, Any]]:
    return [r for _, r in _located_json_records(path)]


def _located_json_records(path: PathLike) -> list[tuple[str, Any]]:
    """(where, record) of a JSON list or JSON lines file; where is `file:line` for JSON lines and
    `file[index]` for a list."""
    p = _path(path)
    raw = _read_text(p).strip()
    if p.suffix == ".jsonl" or (raw.startswith("{") and "\n{" in raw):
        return [(f"{p}:{lineno}", r) for lineno, r in _iter_jsonl(p)]
    data = _load_json(p)
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise FormatError(f"{p}: expected a JSON list of records (or JSON lines)")
    return [(f"{p}[{i}]", r) for i, r in enumerate(data)]


def _as_list(value: Any) -> list[str]:
    value = _maybe_literal(value)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def load_medication_status(path: PathLike) -> list[Example]:
    """Agrawal et al. 2022 medication status: records with `text` (a clinical snippet) and
    `active_medications`, `discontinued_medications`, `neither_medications` (lists, or their
    Python/comma-separated string form). Answer: list of [medication, status]."""
    out = []
    for i, r in enumerate(_load_json_records(path)):
        where = f"{path}[{i}]"
        _require(r, ("text",), where)
        meds = []
        for status in MED_STATUSES:
            meds += [[m, status] for m in _as_list(r.get(f"{status}_medications"))]
        if not any(f"{s}_medications" in r for s in MED_STATUSES):
            raise FormatError(f"{where}: no *_medications keys; has {sorted(r)}")
        out.append(Example(id=str(r.get("id", i)), text=r["text"], answer=meds))
    return out


def load_coreference(path: PathLike) -> list[Example]:
    """Agrawal et al. 2022 coreference: records with `text`, `pronoun` and `antecedent`
    (a string, or a list of acceptable strings joined as one answer)."""
    out = []
    for i, r in enumerate(_load_json_records(path)):
        where = f"{path}[{i}]"
        _require(r, ("text", "pronoun", "antecedent"), where)
        ant = _maybe_literal(r["antecedent"])
        ant = " ".join(map(str, ant)) if isinstance(ant, list) else str(ant)
        out.append(Example(id=str(r.get("id", i)), text=r["text"], answer=ant,
                           meta={"pronoun": r["pronoun"]}))
    return out


# ----------------------------------------------------------------------------- GEN


def load_mts_dialog(path: PathLike) -> list[Example]:
    """MTS-Dialog CSV: ID, section_header, section_text, dialogue -> dialogue => section text."""
    p = _path(path)
    reader = csv.DictReader(io.StringIO(_read_text(p), newline=""))
    try:
        missing = {"ID", "section_header", "section_text", "dialogue"} - set(reader.fieldnames or [])
        if missing:
            raise FormatError(f"{p}: missing CSV columns {sorted(missing)}; has {reader.fieldnames}")
        return [Example(id=str(r["ID"]), text=r["dialogue"].strip(), answer=r["section_text"].strip(),
                        meta={"section_header": r["section_header"]}) for r in reader]
    except csv.Error as err:
        raise FormatError(f"{p}:{reader.line_num}: not valid CSV ({err})") from None


def load_instruction_jsonl(path: PathLike, prefix: str = "") -> list[Example]:
    """instruction/input/output records (JSON list or JSON lines): input => output.

    The record's own instruction (when non-empty) is kept in meta["instruction"]."""
    out = []
    for i, (where, r) in enumerate(_located_json_records(path)):
        if not isinstance(r, dict):
            raise FormatError(f"{where}: expected a JSON object with input and output, got {type(r).__name__}")
        _require(r, ("input", "output"), where)
        out.append(Example(id=str(r.get("id", f"{prefix}{i}")), text=str(r["input"]),
                           answer=str(r["output"]),
                           meta={"instruction": str(r.get("instruction") or "")}))
    return out


def load_meqsum(path: PathLike) -> list[Example]:
    """MeQSum xlsx (first sheet; columns File, CHQ, Summary): question => summary."""
    try:
        import openpyxl  # costly to import for every task; only MeQSum's .xlsx needs it
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading MeQSum's .xlsx needs openpyxl (pip install openpyxl)") from e
    p = _path(path)
    if p.is_dir():
        files = sorted(p.glob("*.xlsx"))
        if not files:
            raise FileNotFoundError(f"no MeQSum .xlsx in {p}")
        p = files[0]
    wb = openpyxl.load_workbook(p, read_only=True)
    try:
        rows = list(wb.worksheets[0].iter_rows(values_only=True))
    finally:
        wb.close()
    if not rows:
        raise FormatError(f"{p}: empty sheet")
    header = [str(h).strip() if h is not None else "" for h in rows[0]]
    try:
        i_file, i_chq, i_sum = header.index("File"), header.index("CHQ"), header.index("Summary")
    except ValueError as e:
        raise FormatError(f"{p}: expected columns File, CHQ, Summary; header is {header}") from e
    out = []
    for r in rows[1:]:
        if not r or r[i_chq] is None or r[i_sum] is None:
            continue
        out.append(Example(id=str(r[i_file] or len(out)), text=str(r[i_chq]).strip(),
                           answer=str(r[i_sum]).strip()))
    return out


# ----------------------------------------------------------------------------- splits


def seeded_split(examples: list[Example], n_test: int | None, seed: int) -> tuple[list[Example], list[Example]]:
    """Shuffle with `seed`; return (test = first n_test, rest). n_test None -> everything is test."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    if n_test is None:
        n_test = len(examples)
    test = [examples[i] for i in sorted(order[:n_test])]
    rest = [examples[i] for i in sorted(order[n_test:])]
    return test, rest
