"""The mini reproduction's tuning mix, built from local data only (a data dir laid out like
../shared/data, and seeds/bioinstruct_seeds.jsonl), in the paper's category proportions
(QA 22.8 %, IE 33.8 %, generation 33.5 %, other 10.0 %; PAPER.md §3).

- QA: MedMCQA dev items outside the in-task hold-out, stratified so each gold letter is a quarter,
  as the eval's paper-style prompt with the answer "C. option text"; the seeds' QA records.
- IE: NCBI-disease training sentences (disease lists) and ChemProt training relations; seeds' IE.
- Generation: MTS-Dialog training conversations (one note section each) and MeQSum questions
  outside the evaluated 400; the seeds' generation records.
- Other: MTS-Dialog section classification (which note section a text is); the seeds' other.

No MedQA test item and no PubMedQA PQA-L item (the transfer endpoints) may be in the mix: every
record is checked by content (`overlapping_records`: a 12-word run of any evaluated question, or of
any PubMedQA abstract sentence, found in a record) and those found are dropped and counted.
Records longer than `MAX_CHARS` are left out (they would not fit the 512-position rows).
"""

from __future__ import annotations

import json
import pathlib
import random
from typing import Any, Iterable, Sequence

from bioinstruct_jax.eval import tasks as tasks_mod
from bioinstruct_jax.eval.loaders import Example, seeded_split
from bioinstruct_jax.eval.parsing import normalize_text

PROPORTIONS = {"qa": 0.228, "ie": 0.338, "gen": 0.335, "other": 0.100}
MAX_CHARS = 1500
SHINGLE = 12  # words in a content-overlap key
SECTION_INSTRUCTION = "Which section of a clinical note is this text from? Reply with the section name."


def _record(instruction: str, inp: str, out: str, category: str, source: str) -> dict[str, str]:
    return {"instruction": instruction, "input": inp, "output": out, "category": category, "source": source}


def _from_task(task: tasks_mod.Task, examples: Iterable[Example], category: str, source: str) -> list[dict[str, str]]:
    return [_record(task.instruction_for(e), task.format_input(e), task.format_target(e), category, source)
            for e in examples]


def medmcqa_heldout_ids(data: tasks_mod.DataSource, n: int, seed: int) -> set[str]:
    """Ids of the MedMCQA items the mini reproduction evaluates (its seeded subset of dev)."""
    dev = tasks_mod.get_task("medmcqa").load(data)
    return {e.id for e in seeded_split(dev, min(n, len(dev)), seed)[0]}


def _stratified(examples: Sequence[Example], n: int, rng: random.Random) -> list[Example]:
    """n examples with the gold answers as even as the pool allows (round-robin over answers)."""
    by: dict[Any, list[Example]] = {}
    for e in examples:
        by.setdefault(e.answer, []).append(e)
    for group in by.values():
        rng.shuffle(group)
    out, keys = [], sorted(by)
    while len(out) < n and any(by.values()):
        for k in keys:
            if by[k] and len(out) < n:
                out.append(by[k].pop())
    return out


def _sources(data: tasks_mod.DataSource, heldout_medmcqa: set[str], rng: random.Random, quota: dict[str, int]
             ) -> dict[str, list[list[dict[str, str]]]]:
    """category -> candidate pools (each already shuffled), seeds excluded."""
    medmcqa = tasks_mod.get_task("medmcqa")
    pool = [e for e in medmcqa.load(data) if e.id not in heldout_medmcqa]
    qa = [_from_task(medmcqa, _stratified(pool, quota["qa"] * 2, rng), "qa", "medmcqa")]
    ncbi, chemprot = tasks_mod.get_task("ncbi_disease"), tasks_mod.get_task("chemprot")
    ie = [_from_task(ncbi, ncbi.load_train(data), "ie", "ncbi_disease"),
          _from_task(chemprot, chemprot.load_train(data), "ie", "chemprot")]
    mts, meqsum = tasks_mod.get_task("mts_dialog"), tasks_mod.get_task("meqsum")
    mts_train = mts.load_train(data)
    gen = [_from_task(mts, mts_train, "gen", "mts_dialog"), _from_task(meqsum, meqsum.load_train(data), "gen", "meqsum")]
    other = [[_record(SECTION_INSTRUCTION, f"Text:\n{e.answer}",
                      tasks_mod.MTS_SECTIONS.get(str(e.meta.get("section_header", "")).upper(),
                                                 str(e.meta.get("section_header", "")).lower()),
                      "other", "mts_dialog_sections") for e in mts_train if e.answer]]
    out = {"qa": qa, "ie": ie, "gen": gen, "other": other}
    for pools in out.values():
        for p in pools:
            rng.shuffle(p)
    return out


def _words(text: str) -> list[str]:
    return normalize_text(text).split()


def endpoint_keys(data: tasks_mod.DataSource) -> set[tuple[str, ...]]:
    """12-word runs (or whole texts of 5-11 words) of every MedQA test question and every PubMedQA
    PQA-L question and abstract sentence: what a mix record must not contain."""
    texts = [e.text for e in tasks_mod.get_task("medqa").load(data)]
    folder = data.resolve("pubmedqa.dir", "pubmedqa")
    for name in ("ori_pqal.json", "test_set.json"):
        f = folder / name
        if f.is_file():
            for r in json.loads(f.read_text(encoding="utf-8")).values():
                texts.append(str(r.get("QUESTION", "")))
                ctx = r.get("CONTEXTS") or []
                texts += [str(c) for c in (ctx if isinstance(ctx, list) else [ctx])]
    keys = set()
    for t in texts:
        w = _words(t)
        if len(w) >= 5:
            keys.add(tuple(w[:SHINGLE]))
    return keys


def overlapping_records(records: Sequence[dict[str, str]], keys: set[tuple[str, ...]]) -> list[int]:
    """Indices of records that contain any key as a run of words."""
    lengths = sorted({len(k) for k in keys})
    hits = []
    for i, r in enumerate(records):
        w = _words(" ".join((r["instruction"], r["input"], r["output"])))
        if any(tuple(w[j:j + n]) in keys for n in lengths for j in range(len(w) - n + 1)):
            hits.append(i)
    return hits


def build_mix(data_dir: str | pathlib.Path, seeds_file: str | pathlib.Path, n_total: int, *,
              heldout_medmcqa: set[str], seed: int = 0) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """(records, summary): `n_total` records in PROPORTIONS (each category's seeds first, then its
    sources in turn), shuffled; summary counts per category and source and the dropped overlaps."""
    data = tasks_mod.DataSource(str(data_dir))
    rng = random.Random(seed)
    quota = {c: int(p * n_total) for c, p in PROPORTIONS.items()}
    for c in sorted(PROPORTIONS, key=lambda c: PROPORTIONS[c] * n_total - quota[c], reverse=True):
        if sum(quota.values()) < n_total:  # largest remainders first, so the quotas sum to n_total
            quota[c] += 1
    seeds = [json.loads(x) for x in pathlib.Path(seeds_file).read_text(encoding="utf-8").splitlines() if x.strip()]
    keys = endpoint_keys(data)
    pools = _sources(data, heldout_medmcqa, rng, quota)
    dropped = 0
    records: list[dict[str, str]] = []
    for cat, want in quota.items():
        chosen = [_record(s["instruction"], s.get("input", ""), s["output"], cat, "seeds")
                  for s in seeds if s.get("category") == cat]
        streams = [iter(p) for p in pools[cat]]
        while len(chosen) < want and streams:
            for it in list(streams):
                if len(chosen) >= want:
                    break
                rec = next(it, None)
                if rec is None:
                    streams.remove(it)
                    continue
                if len(rec["instruction"]) + len(rec["input"]) + len(rec["output"]) > MAX_CHARS or not rec["output"]:
                    continue
                if overlapping_records([rec], keys):
                    dropped += 1
                    continue
                chosen.append(rec)
        records += chosen[:want]
    rng.shuffle(records)
    summary = {"n": len(records), "proportions": PROPORTIONS,
               "categories": {c: sum(r["category"] == c for r in records) for c in PROPORTIONS},
               "sources": {s: sum(r["source"] == s for r in records) for s in sorted({r["source"] for r in records})},
               "dropped_for_overlap_with_medqa_or_pubmedqa": dropped,
               "medmcqa_heldout": len(heldout_medmcqa), "seed": seed}
    return records, summary
