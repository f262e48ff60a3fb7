"""The optional free-text metrics: BERTScore against the `bert-score` package on a tiny random BERT
written here, concept F1 with a term dictionary (hand-computed) and with a real spaCy pipeline,
their wiring into the eval CLI / results.json / table, and skipping tasks whose data is missing."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from bioinstruct_jax.eval import concepts, runner, tasks as T
from bioinstruct_jax.eval.__main__ import main

FIX = pathlib.Path(__file__).parents[1] / "fixtures" / "eval"
WORDS = ("the patient has a fever and cough no pain chest mild severe denies shortness of breath "
         "history hypertension diabetes mother father smokes alcohol").split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> pathlib.Path:
    """A random 3-layer BERT with a word-piece vocabulary, saved by transformers (no download)."""
    torch = pytest.importorskip("torch", reason="BERTScore needs torch (the 'metrics' / 'test' extra)")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bert")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    tok = BertTokenizerFast(vocab=vocab, model_max_length=512)
    assert tok("mild chest pain")["input_ids"] == [2] + [vocab[w] for w in ("mild", "chest", "pain")] + [3]
    tok.save_pretrained(d)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(d)
    return d


CANDS = ["the patient has a fever", "no chest pain", "mother smokes", "severe cough and fever"]
REFS = ["the patient has fever and cough", "mild chest pain", "father smokes alcohol", "severe cough"]


@pytest.mark.parametrize("layer", [1, 2])
def test_bertscore_matches_bert_score_package(tiny_bert, layer):
    bert_score = pytest.importorskip("bert_score", reason="the reference implementation (test extra)")
    from bioinstruct_jax.eval.bertscore import BERTScorer

    ours = BERTScorer(tiny_bert, layer=layer, batch_size=2)  # batches padded: padding must not leak in
    p_ref, r_ref, f_ref = bert_score.score(CANDS, REFS, model_type=str(tiny_bert), num_layers=layer,
                                           batch_size=1, verbose=False)
    cand, ref = ours._embed(CANDS), ours._embed(REFS)
    got = [ours.pair(c, r) for c, r in zip(cand, ref)]
    assert [g[0] for g in got] == pytest.approx(p_ref.tolist(), abs=1e-5)
    assert [g[1] for g in got] == pytest.approx(r_ref.tolist(), abs=1e-5)
    assert [g[2] for g in got] == pytest.approx(f_ref.tolist(), abs=1e-5)
    mean = ours.score(CANDS, REFS)
    assert mean["bertscore_f1"] == pytest.approx(100 * float(f_ref.mean()), abs=1e-3)
    # an empty candidate scores 0 (bert-score's rule; its 0.3.13 cannot encode "" under transformers 5)
    assert ours.score(CANDS + [""], REFS + ["denies pain"])["bertscore_f1"] == pytest.approx(
        100 * float(f_ref.sum()) / 5, abs=1e-3)


def test_bertscore_identity_default_layer_and_errors(tiny_bert, tmp_path):
    from bioinstruct_jax.eval.bertscore import BERTScorer

    s = BERTScorer(tiny_bert)
    assert s.layer == 3 and s.describe()["layer"] == 3  # unknown shape: the last layer
    assert s.score(REFS, REFS)["bertscore_f1"] == pytest.approx(100.0, abs=1e-4)
    with pytest.raises(ValueError, match="layers 1..3"):
        BERTScorer(tiny_bert, layer=4)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        BERTScorer(tmp_path / "missing")


def test_bertscore_without_torch_names_the_extra(tiny_bert, monkeypatch):
    from bioinstruct_jax.eval import bertscore

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ImportError, match=r"bioinstruct-jax\[metrics\]"):
        bertscore.BERTScorer(tiny_bert)


def _terms(tmp_path: pathlib.Path) -> pathlib.Path:
    f = tmp_path / "terms.tsv"
    f.write_text("# medical terms\nchest pain\tC0008031\nthoracic pain\tC0008031\npain\tC0030193\n"
                 "fever\tC0015967\npyrexia\tC0015967\ncough\nhypertension\n")
    return f


def test_dictionary_extractor_longest_match_and_synonyms(tmp_path):
    ex = concepts.DictionaryExtractor.from_file(_terms(tmp_path))
    assert ex("Chest pain, and pyrexia.") == {"C0008031", "C0015967"}  # not also "pain"
    assert ex("thoracic  PAIN; cough") == {"C0008031", "cough"}
    assert ex("pain after the fall") == {"C0030193"}
    assert ex("") == set()
    bad = tmp_path / "bad.tsv"
    bad.write_text("fever\n---\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2"):
        concepts.DictionaryExtractor.from_file(bad)


def test_concept_prf_hand_computed(tmp_path):
    scorer = concepts.ConceptScorer(concepts.load_extractor(f"dict:{_terms(tmp_path)}"))
    # ex1: pred {C0008031, C0015967} ref {C0008031, cough}: tp 1 fp 1 fn 1, F1 0.5
    # ex2: pred {} ref {hypertension}: fn 1, F1 0;  ex3: nothing either side: F1 1 (macro only)
    m = scorer.score(["chest pain and fever", None, "well"], ["thoracic pain, cough", "hypertension", "ok"])
    assert m["concept_precision"] == pytest.approx(50.0)
    assert m["concept_recall"] == pytest.approx(100 / 3)
    assert m["concept_f1"] == pytest.approx(40.0)
    assert m["concept_f1_macro"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="dict:FILE or spacy:PATH"):
        concepts.load_extractor("umls")


def test_spacy_pipeline_extractor(tmp_path):
    spacy = pytest.importorskip("spacy", reason="spaCy pipelines are the user's (the test extra installs spaCy)")
    from spacy.language import Language
    from spacy.tokens import Span

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"}).add_patterns(
        [{"label": "PROBLEM", "pattern": "chest pain"}, {"label": "PROBLEM", "pattern": "fever"}])
    nlp.to_disk(tmp_path / "pipe")
    ex = concepts.load_extractor(f"spacy:{tmp_path / 'pipe'}")
    assert ex("Chest pain with fever.") == {"chest pain", "fever"}

    # a linking pipeline (scispaCy's UMLS linker sets ent._.kb_ents): the first linked id is the concept,
    # an entity the linker could not link keeps its text
    @Language.component("test_fever_linker")
    def link(doc):
        for ent in doc.ents:
            ent._.kb_ents = [("C0015967", 0.99), ("C0000001", 0.5)] if ent.text.lower() == "fever" else []
        return doc

    Span.set_extension("kb_ents", default=None, force=True)
    try:
        nlp.add_pipe("test_fever_linker", last=True)
        assert concepts.SpacyExtractor(nlp)("Fever, chest pain") == {"C0015967", "chest pain"}
    finally:
        Span.remove_extension("kb_ents")


def test_cli_text_metrics_in_results_and_table(tiny_bert, tmp_path, capsys):
    from test_eval_runner import FixedPredictor

    terms = _terms(tmp_path)
    res = main(["--model", "unused", "--tasks", "medqa,mts_dialog", "--data-dir", str(FIX),
                "--output", str(tmp_path / "out"), "--paper-model", "LLaMA 2 7B",
                "--bertscore-model", str(tiny_bert), "--concept-extractor", f"dict:{terms}"],
               predictor=FixedPredictor("The patient has fever and cough."))
    m = res["tasks"]["mts_dialog"]["metrics"]
    assert {"bertscore_precision", "bertscore_recall", "bertscore_f1", "concept_precision", "concept_recall",
            "concept_f1", "concept_f1_macro"} <= set(m)
    assert not any(k.startswith(("bertscore", "concept")) for k in res["tasks"]["medqa"]["metrics"])
    meta = json.loads((tmp_path / "out" / "results.json").read_text())["meta"]
    assert meta["text_metrics"]["bertscore"] == {"model": str(tiny_bert), "layer": 3, "idf": False, "rescaled": False}
    assert meta["text_metrics"]["concept_f1"] == {"extractor": f"dict:{terms}"}
    out = capsys.readouterr().out
    assert "bertscore_f1" in out and "concept_f1" in out
    # the groups: QA beside the paper's mean over the tasks run (medqa 30.37), GEN on our fallback metric
    qa = next(l for l in out.splitlines() if l.startswith("qa "))
    assert "accuracy" in qa and "30.37" in qa and "1/5" in qa
    gen = next(l for l in out.splitlines() if l.startswith("gen "))
    assert "bertscore_f1" in gen and "-" in gen.split()[3]


def test_mts_dialog_prompt_names_the_section(tmp_path):
    task = T.get_task("mts_dialog")
    data = T.DataSource(str(FIX))
    exs = task.load(data)
    assert [e.meta["section_header"] for e in exs] == ["GENHX", "ALLERGY"]
    assert "Write the history of present illness section" in task.prompt(exs[0])
    assert "Write the allergies section" in task.prompt(exs[1])
    shot = task.shot(data)
    one_shot = task.prompt(exs[1], shot)
    assert one_shot.count("Write the allergies section") == 1  # the demo names its own section
    assert f"Write the {T.MTS_SECTIONS[shot.meta['section_header']]} section" in one_shot


def test_skip_missing_tasks_one_line_each(tmp_path, capsys):
    from test_eval_runner import FixedPredictor

    cfg = runner.EvalConfig(output_dir=str(tmp_path))
    data = T.DataSource(str(FIX), {"icliniq": str(tmp_path / "absent.jsonl")})
    tasks = [T.get_task("medqa"), T.get_task("icliniq"), T.get_task("mednli")]
    with pytest.raises(FileNotFoundError):
        runner.run_eval(tasks, FixedPredictor(), data, cfg)
    res = runner.run_eval(tasks, FixedPredictor(), data, runner.EvalConfig(output_dir=str(tmp_path / "b")),
                          skip_missing=True)
    err = capsys.readouterr().err
    skips = [l for l in err.splitlines() if l.startswith("skip ")]
    assert len(skips) == 1 and skips[0].startswith("skip icliniq:") and "absent.jsonl" in skips[0]
    assert set(res["tasks"]) == {"medqa", "mednli"} and set(res["meta"]["skipped"]) == {"icliniq"}
