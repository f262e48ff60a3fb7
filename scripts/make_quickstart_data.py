"""Writes the MeQSum slices bundled in data/quickstart/ (run once; the output is committed).

MeQSum (Ben Abacha & Demner-Fushman, ACL 2019; CC BY 4.0): 1,000 consumer health questions with
one-question summaries. Kept: questions of at most MAX_WORDS words (short prompts keep the
quickstart within its CPU budget), shuffled with SEED; the first N_HELDOUT are the quickstart's
held-out items, the next N_TRAIN its tuning items. Usage:
  python scripts/make_quickstart_data.py ../shared/data/meqsum data/quickstart
"""

from __future__ import annotations

import json
import pathlib
import random
import sys

from bioinstruct_jax.eval.loaders import load_meqsum

SEED, MAX_WORDS, N_HELDOUT, N_TRAIN = 12, 70, 48, 160
INSTRUCTION = "Summarize the consumer health question as one short question."


def main(src: str, out: str) -> None:
    exs = [e for e in load_meqsum(src) if len(e.text.split()) <= MAX_WORDS and e.answer.strip()]
    random.Random(SEED).shuffle(exs)
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("meqsum_heldout", exs[:N_HELDOUT]), ("meqsum_train", exs[N_HELDOUT:N_HELDOUT + N_TRAIN])):
        lines = [json.dumps({"id": f"meqsum-{e.id}", "instruction": INSTRUCTION, "input": " ".join(e.text.split()),
                             "output": e.answer.strip(), "category": "gen"}, ensure_ascii=False) for e in part]
        (out_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(name, len(part))


if __name__ == "__main__":
    main(*sys.argv[1:3])
