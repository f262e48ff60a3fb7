"""The 80 hand-written seed tasks: complete, unique, the paper's category mix, and they pass the
generation filters themselves; the loader's errors name file and line."""

from __future__ import annotations

import json

import pytest

from bioinstruct_jax.data.filters import RougePool, heuristic_reject
from bioinstruct_jax.data.records import RecordError, read_jsonl_records
from bioinstruct_jax.data.seeds import DEFAULT_SEEDS_PATH, category_counts, load_seeds


def test_eighty_unique_complete_seeds_with_paper_mix():
    seeds = load_seeds()
    assert len(seeds) == 80
    assert [s.id for s in seeds] == [f"seed_{i:03d}" for i in range(1, 81)]
    assert category_counts(seeds) == {"qa": 18, "ie": 27, "gen": 27, "other": 8}
    # paper: QA 22.8%, IE 33.8%, GEN 33.5%, other 10.0%
    for cat, paper in {"qa": 22.8, "ie": 33.8, "gen": 33.5, "other": 10.0}.items():
        assert abs(100 * category_counts(seeds)[cat] / 80 - paper) < 1.0
    for key in ("instruction", "input", "output"):
        values = [getattr(s, key) for s in seeds if getattr(s, key)]
        assert len(values) == len(set(values)), f"duplicate {key}"
    assert all(s.instruction.strip() and s.output.strip() for s in seeds)
    with_input = [s for s in seeds if s.input]
    assert len(with_input) >= 70
    assert sum(len(s.input.split()) for s in with_input) / len(with_input) >= 40  # substantial inputs
    for line in DEFAULT_SEEDS_PATH.read_text().splitlines():
        assert set(json.loads(line)) == {"id", "instruction", "input", "output", "category"}


def test_seeds_pass_the_generation_filters():
    pool = RougePool()
    for s in load_seeds():
        assert heuristic_reject(s.instruction, s.input, s.output) is None, s.id
        assert not pool.is_near_duplicate(s.instruction), s.id
        pool.add(s.instruction)


def test_seeds_cover_the_paper_task_types():
    text = " ".join((s.instruction + " " + s.input).lower() for s in load_seeds())
    for needle in ("options", "yes, no or maybe", "entail", "summarize", "soap note", "eligib",
                   "differential diagnosis", "icd-10", "plain language", "medication", "adverse", "abstract"):
        assert needle in text, needle


def test_loader_errors_name_file_and_line(tmp_path):
    good = {"id": "seed_001", "instruction": "Name a loop diuretic.", "input": "", "output": "Furosemide.", "category": "qa"}
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(RecordError, match=r"s\.jsonl:2: not valid JSON"):
        load_seeds(path)
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    with pytest.raises(RecordError, match=r"s\.jsonl:3: id 'seed_001' already used on line 1"):
        load_seeds(path)
    path.write_text(json.dumps({**good, "category": "qna"}) + "\n")
    with pytest.raises(RecordError, match=r"s\.jsonl:1: category 'qna'"):
        load_seeds(path)
    path.write_text(json.dumps({**good, "output": "  "}) + "\n")
    with pytest.raises(RecordError, match=r"s\.jsonl:1: seed seed_001 has an empty 'output'"):
        load_seeds(path)
    path.write_text(json.dumps({**good, "input": 3}) + "\n")
    with pytest.raises(RecordError, match=r"s\.jsonl:1: key 'input' must be a string"):
        read_jsonl_records(path)
    assert read_jsonl_records(path, skip_malformed=True) == []
