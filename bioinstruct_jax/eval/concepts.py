"""Medical-concept F1 of generated text: concepts extracted from the prediction and the reference,
then precision / recall / F1 over the two concept sets.

The paper reports a "concept F1" for its generation tasks but does not name the extractor or the
averaging (PAPER.md §3). The extractor here is pluggable, chosen with `--concept-extractor`:

- `dict:FILE` — a dictionary of terms the user supplies: one term per line, optionally
  `term<TAB>concept id` (e.g. a UMLS CUI, so synonyms count as one concept); `#` starts a comment.
  Matching is on normalised word tokens (lower case, punctuation dropped), longest term first,
  left to right, without overlaps. A line's concept is its id, or the normalised term itself.
- `spacy:PATH` — a spaCy pipeline folder (or installed package name) the user has, e.g. a scispaCy
  model, optionally with the scispaCy UMLS linker or a QuickUMLS component: a concept is the first
  linked knowledge-base id of an entity (`ent._.kb_ents`) when the pipeline links, else the
  normalised entity text. spaCy is not a dependency of this project: install it with the pipeline.

Scores (percent): `concept_precision` / `concept_recall` / `concept_f1` are micro-averaged over all
examples (concept counts summed), `concept_f1_macro` is the mean of per-example F1 (an example with
no concept on either side counts as 1, one side empty as 0).
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Callable, Iterable, Protocol, Sequence

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Extractor(Protocol):
    name: str

    def __call__(self, text: str) -> set[str]: ...


class DictionaryExtractor:
    """Longest-match lookup of a user's term list (see module docstring for the file format)."""

    def __init__(self, terms: dict[tuple[str, ...], str], name: str = "dict"):
        if not terms:
            raise ValueError(f"{name}: no terms")
        self.terms = terms
        self.name = name
        self.longest = max(len(k) for k in terms)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> "DictionaryExtractor":
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"concept dictionary {path}: no such file")
        terms: dict[tuple[str, ...], str] = {}
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            term, _, cid = line.partition("\t")
            key = tuple(words(term))
            if not key:
                raise ValueError(f"{path}:{lineno}: term {term!r} has no letters or digits")
            terms[key] = cid.strip() or " ".join(key)
        return cls(terms, name=f"dict:{path}")

    def __call__(self, text: str) -> set[str]:
        toks = words(text or "")
        found, i = set(), 0
        while i < len(toks):
            for n in range(min(self.longest, len(toks) - i), 0, -1):
                cid = self.terms.get(tuple(toks[i:i + n]))
                if cid is not None:
                    found.add(cid)
                    i += n
                    break
            else:
                i += 1
        return found


class SpacyExtractor:
    """Entities of a spaCy pipeline (scispaCy / QuickUMLS), linked ids when the pipeline links."""

    def __init__(self, nlp: Any, name: str = "spacy"):
        self.nlp = nlp
        self.name = name

    @classmethod
    def load(cls, path: str) -> "SpacyExtractor":
        try:
            import spacy  # optional: only this extractor needs it, and the user brings the pipeline
        except ImportError:
            raise ImportError("--concept-extractor spacy:PATH needs spaCy and the pipeline: pip install spacy "
                              "(and scispacy / quickumls for their models)") from None
        return cls(spacy.load(path), name=f"spacy:{path}")

    def __call__(self, text: str) -> set[str]:
        out = set()
        for ent in self.nlp(text or "").ents:
            kb = ent._.kb_ents if ent.has_extension("kb_ents") else None
            if kb:
                out.add(str(kb[0][0]))
            elif words(ent.text):
                out.add(" ".join(words(ent.text)))
        return out


def load_extractor(spec: str) -> Extractor:
    """`dict:FILE` or `spacy:PATH` as an extractor."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise ValueError(f"--concept-extractor {spec!r}: expected dict:FILE or spacy:PATH")
    loaders: dict[str, Callable[[str], Extractor]] = {"dict": DictionaryExtractor.from_file,
                                                     "spacy": SpacyExtractor.load}
    if kind not in loaders:
        raise ValueError(f"--concept-extractor {spec!r}: unknown kind {kind!r}; expected dict:FILE or spacy:PATH")
    return loaders[kind](arg)


def concept_prf(pred_sets: Iterable[set[str]], ref_sets: Iterable[set[str]]) -> dict[str, float]:
    """Micro P/R/F1 over concept sets and the macro (per-example mean) F1, in percent."""
    tp = fp = fn = 0
    per: list[float] = []
    for p, r in zip(pred_sets, ref_sets, strict=True):
        common = len(p & r)
        tp, fp, fn = tp + common, fp + len(p - r), fn + len(r - p)
        if not p and not r:
            per.append(1.0)
        else:
            per.append(2 * common / (len(p) + len(r)))
    prec = 100.0 * tp / (tp + fp) if tp + fp else 0.0
    rec = 100.0 * tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"concept_precision": prec, "concept_recall": rec, "concept_f1": f1,
            "concept_f1_macro": 100.0 * sum(per) / len(per) if per else 0.0}


class ConceptScorer:
    """Extracts concepts of predictions and references and scores them."""

    def __init__(self, extractor: Extractor):
        self.extractor = extractor

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.extractor.name}

    def score(self, preds: Sequence[str | None], refs: Sequence[str]) -> dict[str, float]:
        if len(preds) != len(refs):
            raise ValueError(f"concept F1: {len(preds)} predictions vs {len(refs)} references")
        if not preds:
            return {}
        return concept_prf([self.extractor(p or "") for p in preds], [self.extractor(str(r)) for r in refs])
