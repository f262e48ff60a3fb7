"""ROUGE-L pool filter against rouge-score itself, the pruning bound, and the heuristics."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer, tokenizers

from bioinstruct_jax.data.filters import (
    RougePool,
    heuristic_reject,
    lcs_length,
    rouge_l_f1,
    rouge_tokens,
)

WORDS = ("the a of patient dose mg daily heart renal kidney liver acute chronic, pain; fever (ICU) "
         "Na+ K+ 5-mg HbA1c type-2 diabetes café").split()
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def random_text(rng: random.Random, lo: int = 0, hi: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def test_tokens_and_f1_match_rouge_score():
    rng = random.Random(0)
    tok = tokenizers.DefaultTokenizer(use_stemmer=False)
    for _ in range(1500):
        a, b = random_text(rng), random_text(rng)
        assert rouge_tokens(a) == tok.tokenize(a)
        expected = SCORER.score(a, b)["rougeL"].fmeasure
        assert rouge_l_f1(rouge_tokens(a), rouge_tokens(b)) == pytest.approx(expected, abs=1e-12)


def test_lcs_hand_values():
    assert lcs_length([1, 2, 3, 4], [2, 4]) == 2
    assert lcs_length([1, 2, 3], [3, 2, 1]) == 1
    assert lcs_length([], [1]) == 0
    # "a b c d" vs "a c d e": LCS 3, F1 = 2*3/(4+4)
    assert rouge_l_f1("abcd", "acde") == pytest.approx(0.75)


def test_pool_max_equals_brute_force_when_over_threshold():
    rng = random.Random(1)
    pool_texts = [random_text(rng, 3, 12) for _ in range(400)]
    pool = RougePool(pool_texts, threshold=0.7)
    for _ in range(300):
        cand = random_text(rng, 1, 12)
        brute = max(SCORER.score(p, cand)["rougeL"].fmeasure for p in pool_texts)
        got, idx = pool.max_similarity(cand)
        if brute >= 0.7:
            assert got == pytest.approx(brute, abs=1e-12)
            assert SCORER.score(pool_texts[idx], cand)["rougeL"].fmeasure == pytest.approx(brute)
        else:
            assert got <= brute + 1e-12
        assert pool.is_near_duplicate(cand) == (brute >= 0.7 - 1e-12)
    # pruning is doing its job: far fewer exact LCS than pairs
    assert pool.stats.exact_lcs < 0.2 * 300 * len(pool_texts)


def test_pool_add_if_novel_and_growth():
    pool = RougePool(["Summarize the discharge note for the patient."])
    assert not pool.add_if_novel("Summarise the discharge note for the patient!")  # 6/7 tokens shared
    assert pool.add_if_novel("List every medication and its dose mentioned in the dialogue.")
    assert len(pool) == 2
    assert pool.is_near_duplicate("list every medication and its dose mentioned in the dialogue")
    assert not pool.is_near_duplicate("Which antibiotic is first line for uncomplicated cystitis?")
    # unseen words only: never a duplicate
    assert pool.max_similarity("zzz qqq")[0] == 0.0


def test_heuristics():
    ok = dict(input_text="BP 150/95 on two visits.", output="Stage 2 hypertension.")
    assert heuristic_reject("Classify the blood pressure reading.", **ok) is None
    assert heuristic_reject("Classify it.", **ok) == "too_short"
    assert heuristic_reject(" ".join(["word"] * 151), **ok) == "too_long"
    assert heuristic_reject(" ".join(["word"] * 150), **ok) is None
    for media in ("Describe the chest X-ray image below.", "Make a diagram of the heart chambers.",
                  "Summarize the audio of this consultation.", "Interpret this Graph of glucose values."):
        assert heuristic_reject(media, **ok) == "banned_word", media
    assert heuristic_reject("Describe imaging findings typical of appendicitis.", **ok) is None
    # ordinary clinical words the paper's list does not ban
    for clinical in ("Summarize the chart review findings for this admission.",
                     "Explain why the blood draw was repeated.", "Interpret the ECG recording described below.",
                     "Describe the plot of the story the patient told."):
        assert heuristic_reject(clinical, **ok) is None, clinical
    assert heuristic_reject("Repeat the note back.", input_text="Pt stable.", output="  pt STABLE ") == "output_repeats_input"
    assert heuristic_reject("Answer the question briefly.", input_text="", output=" ") == "empty_output"
    assert heuristic_reject("Answer the question briefly.", input_text="", output="Yes.") is None


def test_a_pair_exactly_at_the_threshold_is_a_near_duplicate():
    """The paper rejects ROUGE-L >= 0.7: LCS 7 of two 10-token texts (F1 exactly 0.7, also by
    rouge-score) is a near duplicate; LCS 7 of 10 and 11 tokens (0.667) is not."""
    seed = "a1 a2 a3 a4 a5 a6 a7 a8 a9 a10"
    at, below = "a1 a2 a3 a4 a5 a6 a7 b8 b9 b10", "a1 a2 a3 a4 a5 a6 a7 b8 b9 b10 b11"
    assert SCORER.score(seed, at)["rougeL"].fmeasure == 0.7
    pool = RougePool([seed], threshold=0.7)
    assert pool.max_similarity(at) == (0.7, 0)
    assert pool.is_near_duplicate(at) and not pool.is_near_duplicate(below)
    assert not pool.add_if_novel(at) and len(pool) == 1
