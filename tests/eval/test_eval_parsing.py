"""Answer parsing: each parser on the reply shapes models produce, and None on unreadable ones."""

from __future__ import annotations

import pytest

from bioinstruct_jax.eval import parsing as P

OPTS = {"A": "Penicillin", "B": "Warfarin", "C": "Vitamin C", "D": "Vitamin C deficiency"}


@pytest.mark.parametrize("reply,want", [
    ("B", "B"), ("(B)", "B"), ("b.", "B"), ("B) Warfarin", "B"), ("Answer: C", "C"),
    ("The answer is (d).", "D"), ("the answer is b.", "B"), ("I think the correct option is A because...", "A"),
    ("  **C. Vitamin C**", "C"), ("Warfarin is the drug to use.", "B"),
    ("Vitamin C deficiency explains it", "D"),  # longer option text wins over its prefix option
    ("A patient like this needs penicillin", "A"),  # leading article 'A' + option text
    ("Option D", "D"), ("E", None), ("", None), ("I do not know.", None), ("(A) or (B)", None),
])
def test_mcqa(reply, want):
    assert P.parse_mcqa(reply, OPTS) == want


def test_mcqa_five_options():
    assert P.parse_mcqa("E. none of the above", {**OPTS, "E": "None of the above"}) == "E"


@pytest.mark.parametrize("reply,want", [
    ("Yes", "yes"), ("yes, because the trial showed it.", "yes"), ("No.", "no"), ("maybe", "maybe"),
    ("The answer is no", "no"), ("Based on the results, the answer is: Yes", "yes"),
    ("It is uncertain.", "maybe"), ("nothing", None), ("", None), ("Not known", None),
    ("Answer: No, not yes", "no"),
])
def test_yes_no_maybe(reply, want):
    assert P.parse_yes_no(reply) == want


def test_yes_no_without_maybe():
    assert P.parse_yes_no("maybe", allow_maybe=False) is None
    assert P.parse_yes_no("Yes.", allow_maybe=False) == "yes"


@pytest.mark.parametrize("reply,want", [
    ("entailment", "entailment"), ("The hypothesis contradicts the premise.", "contradiction"),
    ("Neutral", "neutral"), ("It entails it", "entailment"), ("unsure", None),
])
def test_nli(reply, want):
    assert P.parse_nli(reply) == want


LABELS = ("AGONIST", "AGONIST-INHIBITOR", "INHIBITOR", "INDIRECT-DOWNREGULATOR", "DOWNREGULATOR",
          "SUBSTRATE_PRODUCT-OF", "PRODUCT-OF")


@pytest.mark.parametrize("reply,want", [
    ("INHIBITOR", "INHIBITOR"), ("inhibitor.", "INHIBITOR"), ("agonist-inhibitor", "AGONIST-INHIBITOR"),
    ("Indirect downregulator", "INDIRECT-DOWNREGULATOR"), ("substrate product of", "SUBSTRATE_PRODUCT-OF"),
    ("The relation is AGONIST", "AGONIST"), ("Relation: PRODUCT-OF", "PRODUCT-OF"), ("binds", None),
])
def test_chemprot_labels(reply, want):
    assert P.parse_label(reply, LABELS) == want


@pytest.mark.parametrize("reply,want", [
    ("aspirin, gastric ulcer", ["aspirin", "gastric ulcer"]),
    ("- aspirin\n- gastric ulcer\n", ["aspirin", "gastric ulcer"]),
    ("1. aspirin\n2) renal failure.", ["aspirin", "renal failure"]),
    ("• Aspirin; • aspirin; lithium", ["Aspirin", "lithium"]),
    ("Chemicals: lithium, haloperidol\nDiseases: renal failure", ["lithium", "haloperidol", "renal failure"]),
    ('"cystic fibrosis"', ["cystic fibrosis"]),
    ("None", []), ("None.", []), ("No entities found", []), ("N/A", []),
    ("", None), ("   ", None),
])
def test_entity_list(reply, want):
    assert P.parse_list(reply) == want


@pytest.mark.parametrize("reply,want", [
    ("metformin: active\nlisinopril: discontinued", [("metformin", "active"), ("lisinopril", "discontinued")]),
    ("- metformin (active)\n- statin (neither)", [("metformin", "active"), ("statin", "neither")]),
    ("Active: metformin, aspirin\nDiscontinued: lisinopril",
     [("metformin", "active"), ("aspirin", "active"), ("lisinopril", "discontinued")]),
    ("lisinopril - stopped", [("lisinopril", "discontinued")]),
    ("None", []), ("", None), ("the patient is doing well", None),
])
def test_medication_status(reply, want):
    assert P.parse_medication_status(reply) == want


@pytest.mark.parametrize("reply,want", [
    ("a chest x-ray", "a chest x-ray"), ('Antecedent: "Her mother".', "Her mother"),
    ("\nThe antecedent is the left knee\nmore", "the left knee"), ("", None), ("  \n ", None),
])
def test_span(reply, want):
    assert P.parse_span(reply) == want


def test_normalize_text():
    assert P.normalize_text("  Ataxia - Telangiectasia ") == "ataxia telangiectasia"
    assert P.normalize_text("5-FU") == P.normalize_text("5 - fu")


# Adversarial replies: each reads as an answer only to a parser that guesses. The first four are
# the false positives of the earlier parser (all read as A, or as "no" for PubMedQA).
MEDQA_OPTS = {"A": "Iron deficiency anemia", "B": "Increased total iron-binding capacity",
              "C": "Vitamin B12 deficiency", "D": "Folate deficiency"}


@pytest.mark.parametrize("reply,want", [
    ("The answer is a condition that affects red cells.", None),
    ("A 24-year-old woman with fatigue most likely has iron loss.", None),
    ("A. Iron deficiency anemia\nB. Increased total iron-binding capacity\nC. Vitamin B12 deficiency\n"
     "D. Folate deficiency", None),  # the option list echoed
    ("A. Iron deficiency anemia B. Increased total iron-binding capacity C. Vitamin B12 deficiency", None),
    ("A. Iron deficiency anemia\nB. Increased total iron-binding capacity\nAnswer: C", "C"),  # echo, then a cue
    ("A patient with these findings", None),
    ("a 24-year-old", None),
    ("Vitamin B12 deficiency or folate deficiency", None),  # two option texts, no cue
    ("The answer is B because the TIBC rises.", "B"),
    ("A Iron deficiency anemia", "A"),  # the letter followed by its own option text
    ("the answer is (a)", "A"),
    ("a) iron deficiency", "A"),
    ("D", "D"), ("Answer: D.", "D"), ("(C)", "C"),
])
def test_mcqa_does_not_guess(reply, want):
    assert P.parse_mcqa(reply, MEDQA_OPTS) == want


@pytest.mark.parametrize("reply,want", [
    ("There is no evidence of benefit; yes", "yes"),
    ("There is no evidence that the drug works.", None),  # "no" as a determiner is not an answer
    ("No significant difference was found.", "no"),  # the reply's first word
    ("Yes or no cannot be decided", None),
    ("The results were mixed, so maybe.", "maybe"),
    ("no", "no"), ("The decision: maybe", "maybe"),
    ("Nobody knows", None), ("Notably, yes", "yes"),
])
def test_yes_no_does_not_guess(reply, want):
    assert P.parse_yes_no(reply) == want
