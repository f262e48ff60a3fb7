"""The mini reproduction's tuning mix (jobs/tuning_mix.py): category proportions, no MedQA or
PubMedQA item by content (a planted one is found), no held-out MedMCQA item, balanced letters."""

from __future__ import annotations

import collections
import json

import pytest

from bioinstruct_jax.eval import tasks as T
from bioinstruct_jax.jobs import tuning_mix as M
from conftest import REPO_ROOT

FIX = REPO_ROOT / "tests" / "fixtures" / "eval"
SHARED = REPO_ROOT.parent / "shared" / "data"
SEEDS = REPO_ROOT / "seeds" / "bioinstruct_seeds.jsonl"


def test_overlap_check_finds_a_planted_endpoint_item():
    keys = M.endpoint_keys(T.DataSource(str(FIX)))
    medqa = T.get_task("medqa").load(T.DataSource(str(FIX)))[0]
    pqal = next(iter(json.loads((FIX / "pubmedqa" / "ori_pqal.json").read_text()).values()))
    clean = M._record("Summarize.", "The patient has a cough and a mild fever since Monday.", "Cough.", "gen", "x")
    planted_q = M._record("Answer.", "Reworded: " + medqa.text.upper() + " Thanks", "A", "qa", "x")
    planted_ctx = M._record("Answer.", "Abstract: " + pqal["CONTEXTS"][0], "yes", "qa", "x")
    assert M.overlapping_records([clean, planted_q, planted_ctx], keys) == [1, 2]


def test_fixture_mix_has_the_proportions_and_no_endpoint_item():
    data = T.DataSource(str(FIX))
    held = M.medmcqa_heldout_ids(data, 2, 0)
    records, summary = M.build_mix(FIX, SEEDS, 50, heldout_medmcqa=held)
    assert summary["categories"] == {"qa": 11, "ie": 17, "gen": 17, "other": 5} and len(records) == 50
    assert M.overlapping_records(records, M.endpoint_keys(data)) == []


@pytest.mark.skipif(not (SHARED / "medqa").is_dir(), reason="needs ../shared/data (the real benchmark files)")
def test_real_mix_is_clean_balanced_and_in_proportion():
    data = T.DataSource(str(SHARED))
    held = M.medmcqa_heldout_ids(data, 400, 0)
    records, summary = M.build_mix(SHARED, SEEDS, 1600, heldout_medmcqa=held)
    assert len(records) == 1600
    for cat, share in M.PROPORTIONS.items():
        assert abs(summary["categories"][cat] / 1600 - share) < 0.001
    assert M.overlapping_records(records, M.endpoint_keys(data)) == []
    heldout_questions = {e.text for e in T.get_task("medmcqa").load(data) if e.id in held}
    assert not any(r["input"].split("\n")[0].removeprefix("Question: ") in heldout_questions for r in records)
    letters = collections.Counter(r["output"][0] for r in records if r["source"] == "medmcqa")
    assert max(letters.values()) - min(letters.values()) <= 0.1 * sum(letters.values())
    assert not any(r["source"] in ("chatdoctor", "bioasq", "icliniq") for r in records)
