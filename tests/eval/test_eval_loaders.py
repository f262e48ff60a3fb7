"""Eval loaders: each raw format read from our synthetic fixtures, and the real files' known
counts when ../shared/data is present (skipped otherwise)."""

from __future__ import annotations

import pathlib

import pytest

from bioinstruct_jax.eval import loaders as L
from bioinstruct_jax.eval import tasks as T
from conftest import shared_path

FIX = pathlib.Path(__file__).parents[1] / "fixtures" / "eval"


def test_medqa_fixture():
    exs = L.load_medqa(FIX / "medqa/US_4_options_test.jsonl")
    assert [e.answer for e in exs] == ["A", "C", "B"]
    assert exs[1].options["C"] == "Vitamin C" and list(exs[0].options) == ["A", "B", "C", "D"]
    assert len({e.id for e in exs}) == 3


def test_medmcqa_fixture_maps_cop_to_letter():
    exs = L.load_medmcqa(FIX / "medmcqa/dev.json")
    assert [e.answer for e in exs] == ["B", "A", "C"]
    assert exs[0].options["B"] == "70/min" and exs[0].id == "fixture-mm-1"


def test_pubmedqa_fixture_three_ways():
    gt = L.load_pubmedqa(FIX / "pubmedqa/ori_pqal.json", ground_truth=FIX / "pubmedqa/test_ground_truth.json")
    assert [(e.id, e.answer) for e in gt] == [("1002", "no"), ("1003", "maybe")]
    assert gt[0].context.startswith("Background: We studied")
    assert [e.id for e in L.load_pubmedqa(FIX / "pubmedqa/test_set.json")] == ["1002", "1003"]
    rest = L.load_pubmedqa(FIX / "pubmedqa/ori_pqal.json", exclude=FIX / "pubmedqa/test_ground_truth.json")
    assert [e.id for e in rest] == ["1001", "1004"]


def test_bioasq_fixture_yesno_dedup_and_case():
    exs = L.load_bioasq_yesno(FIX / "bioasq")
    assert [(e.id, e.answer) for e in exs] == [("fixbq1", "yes"), ("fixbq3", "no"), ("fixbq4", "yes")]
    assert "Synthetic snippet" in exs[0].context


def test_mednli_fixture():
    exs = L.load_mednli(FIX / "mednli/mli_test_v1.jsonl")
    assert [e.answer for e in exs] == ["entailment", "contradiction", "neutral"]
    assert exs[0].context == "The patient has a fever of 39 C."


def test_iob_fixture_mentions():
    exs = L.load_iob(FIX / "ner/BC5CDR-IOB/test.tsv")
    assert len(exs) == 3
    assert exs[0].answer == [["Aspirin", "Chemical"], ["gastric ulcer", "Disease"]]
    assert exs[1].answer == []
    assert exs[2].answer == [["Lithium", "Chemical"], ["haloperidol", "Chemical"], ["renal failure", "Disease"]]
    ncbi = L.load_iob(FIX / "ner/NCBI-disease-IOB/test.tsv")
    assert ncbi[1].answer == [["ataxia - telangiectasia", "Disease"], ["breast cancer", "Disease"]]


def test_iob_rejects_bad_tag(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("word\tX-Thing\n")
    with pytest.raises(L.FormatError, match="bad.tsv:1"):
        L.load_iob(p)


def test_chemprot_fixture():
    exs = L.load_chemprot(FIX / "chemprot/test.txt")
    assert [e.answer for e in exs] == ["INHIBITOR", "AGONIST", "SUBSTRATE"]


def test_clinical_ie_fixtures():
    ms = L.load_medication_status(FIX / "clinical_ie/medication_status_test.json")
    assert ms[0].answer == [["metformin", "active"], ["lisinopril", "discontinued"], ["statin", "neither"]]
    assert ms[1].answer == [["aspirin", "active"]]  # list stored as its Python repr
    co = L.load_coreference(FIX / "clinical_ie/coreference_test.json")
    assert [c.answer for c in co] == ["a chest x-ray", "Her mother"] and co[1].meta["pronoun"] == "she"


def test_gen_fixtures():
    mts = L.load_mts_dialog(FIX / "mts_dialog/MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv")
    assert len(mts) == 2 and mts[1].answer == "Penicillin, causes rash." and mts[1].meta["section_header"] == "ALLERGY"
    ic = L.load_instruction_jsonl(FIX / "icliniq/iCliniq_gpt4_reference.jsonl")
    assert len(ic) == 6 and ic[0].text.startswith("Hello doctor")
    mq = L.load_meqsum(FIX / "meqsum")
    assert len(mq) == 5 and mq[0].answer == "Who manufactures fixtamol?"


def test_missing_key_names_file_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"question": "q", "options": {"A": "x"}}\n')
    with pytest.raises(L.FormatError, match=r"m.jsonl:1.*answer_idx"):
        L.load_medqa(p)


def test_every_task_loads_its_fixture_and_shot():
    data = T.DataSource(str(FIX))
    for name in T.TASK_NAMES:
        task = T.get_task(name)
        exs = task.load(data)
        assert exs, name
        shot = task.shot(data, seed=0)
        assert shot.answer not in ("", [], None), name
    ic_test = T.get_task("icliniq").load(data)
    ic_pool = T.get_task("icliniq").load_train(data)
    assert len(ic_test) == 5 and len(ic_pool) == 1 and not {e.id for e in ic_test} & {e.id for e in ic_pool}
    bio_pool = T.get_task("bioasq").load_train(data)
    assert [e.id for e in bio_pool] == ["fixbq9"]  # test questions left out of the shot pool


def test_user_task_holds_out_its_shot():
    t = T.get_task(f"jsonl:{FIX / 'user_task.jsonl'}:exact_match")
    data = T.DataSource()
    test, pool = t.load(data), t.load_train(data)
    assert len(test) == 2 and len(pool) == 1 and t.metrics == ("exact_match",)
    assert T.get_task(f"jsonl:{FIX / 'user_task.jsonl'}").metrics == ("rouge", "bleu")


# ----------------------------------------------------------------------------- real data counts

REAL = {
    "medqa": ("data/medqa/US_4_options_test.jsonl", 1273),
    "medmcqa": ("data/medmcqa/dev.json", 4183),
    "pubmedqa": ("data/pubmedqa/test_ground_truth.json", 500),
    "bioasq": ("data/bioasq", 618),
    "mts_dialog": ("data/mts_dialog/MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv", 200),
}


@pytest.mark.parametrize("task", sorted(REAL))
def test_real_counts(shared_dir, task):
    rel, count = REAL[task]
    shared_path(shared_dir, rel)
    exs = T.get_task(task).load(T.DataSource(str(shared_dir / "data")))
    assert len(exs) == count
    assert len({e.id for e in exs}) == count


def test_real_pubmedqa_two_sources_agree(shared_dir):
    d = shared_path(shared_dir, "data/pubmedqa")
    a = {e.id: e.answer for e in L.load_pubmedqa(d / "test_set.json")}
    b = {e.id: e.answer for e in L.load_pubmedqa(d / "ori_pqal.json", ground_truth=d / "test_ground_truth.json")}
    assert a == b and len(a) == 500


def test_real_other_sets_parse(shared_dir):
    d = shared_dir / "data"
    shared_path(shared_dir, "data/ner/NCBI-disease-IOB/test.tsv")
    ncbi = L.load_iob(d / "ner/NCBI-disease-IOB/test.tsv")
    assert len(ncbi) == 940 and sum(len(e.answer) for e in ncbi) > 900
    assert len(L.load_chemprot(d / "chemprot/test.txt")) == 3469
    assert len(L.load_mts_dialog(d / "mts_dialog/MTS-Dialog-TrainingSet.csv")) == 1201
    assert len(T.get_task("icliniq").load(T.DataSource(str(d)))) == 100
    assert len(L.load_meqsum(d / "meqsum")) == 1000


def test_tfds_builder_from_manual_dir(tmp_path):
    """The array_record TFDS builder reads the same fixture files (no download: all present)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from bioinstruct_jax.eval import tfds_sets as E

    assert set(E.BUILDERS) == set(T.TASK_NAMES)
    b = E.builder_class("pubmedqa")(data_dir=str(tmp_path), file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(FIX)))
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"test": 2, "train": 2}
    got = {E.example_from_record(r)["id"]: E.example_from_record(r)["answer"]
           for r in b.as_data_source()["test"]}
    assert got == {"1002": "no", "1003": "maybe"}
