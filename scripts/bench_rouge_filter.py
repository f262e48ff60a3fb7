"""Throughput of the ROUGE-L pool filter (candidates/s) against a pool of synthetic instructions.

    .venv/bin/python scripts/bench_rouge_filter.py --pool 25000 --candidates 1000

Synthetic instructions: a verb phrase from a small set of templates followed by Zipf-distributed
words from a 4,000-word vocabulary with common function words, 6-30 tokens, so that token overlap
looks like real instructions'. Also times rouge-score's own scorer on a few candidates for scale.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bioinstruct_jax.data.filters import RougePool

TEMPLATES = ["Summarize", "Explain", "What is", "Identify the", "List the", "Classify the", "Extract all",
             "Rewrite the", "Given the", "Which of the following", "Determine whether", "Describe how"]
FUNCTION = ["the", "of", "a", "in", "for", "and", "to", "with", "patient", "following", "this", "is"]


def synthetic(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = FUNCTION + [f"term{i}" for i in range(4000)]
    probs = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    probs /= probs.sum()
    out = []
    for _ in range(n):
        k = int(rng.integers(6, 31))
        words = rng.choice(len(vocab), size=k, p=probs)
        out.append(TEMPLATES[int(rng.integers(len(TEMPLATES)))] + " " + " ".join(vocab[w] for w in words))
    return out


def time_pool(pool_texts: list[str], cands: list[str]) -> tuple[RougePool, float, float, int]:
    """(the pool, seconds to build it from `pool_texts`, seconds to check every candidate against
    it, candidates found near-duplicate)."""
    t0 = time.perf_counter()
    pool = RougePool(pool_texts)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rejected = sum(pool.is_near_duplicate(c) for c in cands)
    return pool, build_s, time.perf_counter() - t0, int(rejected)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=25000)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--near-dup-fraction", type=float, default=0.3,
                    help="share of candidates made by changing 2 words of a pool instruction")
    ap.add_argument("--reference", type=int, default=3, help="candidates to time with rouge-score (0: skip)")
    args = ap.parse_args()
    pool_texts = synthetic(args.pool, 0)
    cands = synthetic(args.candidates, 1)
    rng = np.random.default_rng(2)
    for j in range(int(args.near_dup_fraction * len(cands))):
        words = pool_texts[int(rng.integers(len(pool_texts)))].split()
        for _ in range(2):
            words[int(rng.integers(len(words)))] = "changed"
        cands[j] = " ".join(words)
    pool, t_build, t_query, rejected = time_pool(pool_texts, cands)
    print(f"pool {len(pool)} built in {t_build:.2f} s ({len(pool) / t_build:,.0f} instr/s)")
    print(f"{len(cands)} candidates in {t_query:.2f} s: {len(cands) / t_query:,.0f} candidates/s; "
          f"{rejected} near-duplicates; exact LCS on {pool.stats.exact_lcs / len(cands):.1f} pool entries per candidate")
    if args.reference:
        from rouge_score import rouge_scorer  # optional (a test extra): only for --reference

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        t0 = time.perf_counter()
        for c in cands[: args.reference]:
            max(scorer.score(p, c)["rougeL"].fmeasure for p in pool_texts)
        t_ref = (time.perf_counter() - t0) / args.reference
        print(f"rouge-score, all pairs: {1 / t_ref:.2f} candidates/s ({t_ref:.2f} s each)")


if __name__ == "__main__":
    main()
