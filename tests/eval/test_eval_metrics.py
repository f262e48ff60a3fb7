"""Metrics against values computed by hand (worked out in the comments)."""

from __future__ import annotations

import math

import pytest

from bioinstruct_jax.eval import metrics as M


def test_accuracy_counts_parse_failures_wrong():
    assert M.accuracy(["A", "B", None, "D"], ["A", "C", "C", "D"]) == 50.0
    with pytest.raises(ValueError, match="3 predictions vs 2"):
        M.accuracy(["A"] * 3, ["A"] * 2)


def test_entity_prf():
    # ex1: {aspirin, gastric ulcer, ulcer} vs {aspirin, gastric ulcer}: tp 2, fp 1 (case ignored)
    # ex2: parse failure vs {renal failure}: fn 1;  ex3: {lithium} vs {}: fp 1
    # tp 2, fp 2, fn 1 -> P 2/4 = 50, R 2/3 = 66.67, F1 = 2*.5*(2/3)/(.5+2/3) = 4/7 = 57.14
    got = M.entity_prf([["Aspirin", "gastric ulcer", "ulcer"], None, ["lithium"]],
                       [["aspirin", "gastric ulcer"], ["renal failure"], []])
    assert got["precision"] == pytest.approx(50.0)
    assert got["recall"] == pytest.approx(200 / 3)
    assert got["f1"] == pytest.approx(400 / 7)


def test_entity_prf_normalises_tokenisation():
    # "ataxia-telangiectasia" generated vs IOB-joined "ataxia - telangiectasia": the same mention
    assert M.entity_prf([["Ataxia-telangiectasia"]], [["ataxia - telangiectasia"]])["f1"] == 100.0


def test_micro_prf_labels():
    # tp: INHIBITOR, SUBSTRATE = 2; AGONIST for ANTAGONIST: fp 1 + fn 1; None for AGONIST: fn 1
    # P 2/3, R 2/4, F1 = 2*(2/3)(1/2)/(7/6) = 4/7
    got = M.micro_prf_labels(["INHIBITOR", "AGONIST", None, "SUBSTRATE"],
                             ["INHIBITOR", "ANTAGONIST", "AGONIST", "SUBSTRATE"])
    assert got["precision"] == pytest.approx(200 / 3)
    assert got["recall"] == pytest.approx(50.0)
    assert got["f1"] == pytest.approx(400 / 7)
    # with a negative class ignored: (false, false) is no tp; predicting X for false is a fp
    got = M.micro_prf_labels(["false", "X", "X"], ["false", "false", "X"], ignore=["false"])
    assert got["precision"] == pytest.approx(50.0) and got["recall"] == pytest.approx(100.0)


def test_rouge_hand_computed():
    # pred "the cat sat" vs ref "the cat sat on the mat"
    # ROUGE-1: overlap 3, P 3/3, R 3/6 -> F 2/3;  ROUGE-2: overlap 2 of 2 / 5 -> F 2*1*.4/1.4 = 4/7
    # ROUGE-L: LCS 3 -> same as ROUGE-1
    got = M.rouge(["the cat sat"], ["the cat sat on the mat"])
    assert got["rouge1"] == pytest.approx(200 / 3)
    assert got["rouge2"] == pytest.approx(400 / 7)
    assert got["rougeL"] == pytest.approx(200 / 3)
    # mean over examples: second pair identical (100 each)
    got = M.rouge(["the cat sat", "a b"], ["the cat sat on the mat", "a b"])
    assert got["rouge1"] == pytest.approx((200 / 3 + 100) / 2)


def test_bleu_hand_computed():
    # pred "the cat sat on the mat" vs ref "the cat sat on a mat" (same length: BP 1)
    # n-gram precisions 5/6, 3/5, 2/4, 1/3 -> BLEU = (5/6*3/5*1/2*1/3)^(1/4) = (1/12)^(1/4)
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(
        100 * (1 / 12) ** 0.25, abs=1e-6)
    assert M.bleu(["same words here ok"], ["same words here ok"]) == pytest.approx(100.0)


def test_token_prf():
    # "the chest x-ray" vs "a chest x-ray": tokens the/chest/x/ray vs a/chest/x/ray: tp 3 fp 1 fn 1
    # None vs "her mother": fn 2.  tp 3, fp 1, fn 3 -> P 75, R 50, F1 60
    got = M.token_prf(["the chest x-ray", None], ["a chest x-ray", "her mother"])
    assert (got["precision"], got["recall"]) == (pytest.approx(75.0), pytest.approx(50.0))
    assert got["f1"] == pytest.approx(60.0)


def test_medication_status_scores():
    # ex1 names: metformin, lisinopril found (tp 2), aspirin extra (fp 1), statin missed (fn 1);
    #   statuses of the 2 found: metformin right, lisinopril wrong -> conditional 1/2
    #   pairs: (metformin, active) tp; fp 2; fn 2
    # ex2: parse failure vs warfarin: fn 1, pair fn 1
    # names: P 2/3, R 2/4, F1 4/7; pairs: P 1/3, R 1/4, F1 2/7
    pred = [[("Metformin", "active"), ("lisinopril", "active"), ("aspirin", "neither")], None]
    gold = [[("metformin", "active"), ("lisinopril", "discontinued"), ("statin", "neither")],
            [("warfarin", "active")]]
    got = M.medication_status_scores(pred, gold)
    assert got["precision"] == pytest.approx(200 / 3) and got["recall"] == pytest.approx(50.0)
    assert got["f1"] == pytest.approx(400 / 7)
    assert got["conditional_accuracy"] == pytest.approx(50.0)
    assert got["pair_f1"] == pytest.approx(200 / 7)


def test_exact_match_and_empty():
    assert M.exact_match(["Blood pressure.", None], ["blood pressure", "heart rate"]) == 50.0
    assert M.entity_prf([], [])["f1"] == 0.0 and not math.isnan(M.entity_prf([], [])["f1"])
