"""Answer parsing: generated text -> the task's answer, or None when it cannot be read.

Every parser returns None on failure (never raises on model output); the runner counts those as
parse failures. Parsers are deliberately lenient about wording and formatting and strict about
ambiguity (two different answers in one reply -> the first explicit one, else None).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

_WS = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """Lowercase, any run of non-alphanumerics -> one space, stripped (for matching only)."""
    return _WS.sub(" ", re.sub(r"[^0-9a-z]+", " ", s.lower())).strip()


# ----------------------------------------------------------------------------- multiple choice

_CUE = r"(?:answer|option|choice)\s*(?:is|would be|:|=|-)?\s*(?:option\s*|choice\s*)?"
_ANSWER_CUE = re.compile(_CUE + r"[\(\[]?\s*([A-Ea-e])\s*[\)\]]?(?![A-Za-z0-9-])", re.IGNORECASE)
_LEADING_LETTER = re.compile(r"^[\s\"'*#]*([\(\[])?([A-Ea-e])(?![A-Za-z0-9-])")
_PAREN_LETTER = re.compile(r"[\(\[]([A-Ea-e])[\)\]]")
_OPTION_LINE = re.compile(r"(?:^|\n)\s*[\(\[]?([A-E])[\)\].:]", re.MULTILINE)
_OPTION_INLINE = re.compile(r"(?:^|\s)[\(\[]?([A-E])[\)\].:]\s")
_PUNCT_AFTER = re.compile(r"\s*(?:$|[\)\].:,;!?]|[-–—](?:\s|$))")
_CONNECTIVE_AFTER = re.compile(r"\s+(?:because|since|as|which|would be|is correct|is the)\b", re.I)


def _letter_stands_alone(text: str, end: int, letter: str, options: Mapping[str, str], bracketed: bool) -> bool:
    """Whether the letter ending at `end` is an answer rather than a word: it is bracketed, or
    followed by punctuation / the end / a connective ("because"), or by its own option's text.
    A bare "A" / "a" before other words is the English article ("A 24-year-old woman ...")."""
    if bracketed:
        return True
    rest = text[end:]
    if _PUNCT_AFTER.match(rest) or _CONNECTIVE_AFTER.match(rest):
        return True
    opt = normalize_text(options.get(letter.upper(), ""))
    return bool(opt) and f"{normalize_text(rest)} ".startswith(f"{opt} ")


def parse_mcqa(text: str, options: Mapping[str, str]) -> str | None:
    """A letter in `options` (e.g. "A".."D") from a reply such as "B", "(B)", "b.",
    "Answer: C", "The answer is (d).", "B. Tell the attending ..." or just the option's text.

    It does not guess: an article "A"/"a" is not the letter A ("A 24-year-old woman ...", "The
    answer is a condition that ..."); a reply that echoes the option list ("A. x  B. y ...") is
    unreadable unless an answer cue follows it; several option texts, or several bracketed
    letters, without a cue are unreadable."""
    letters = [k.upper() for k in options]
    if not text or not text.strip():
        return None
    head = text.strip()

    def ok(letter: str) -> str | None:
        letter = letter.upper()
        return letter if letter in letters else None

    cue = None
    for m in _ANSWER_CUE.finditer(head):
        bracketed = bool(re.search(r"[\(\[]\s*[A-Ea-e]\s*$", head[:m.end(1)]))
        if ok(m.group(1)) and _letter_stands_alone(head, m.end(1), m.group(1), options, bracketed):
            cue = ok(m.group(1))
            break
    echoed = (len({x for x in _OPTION_LINE.findall(head) if ok(x)}) >= 2
              or len({x for x in _OPTION_INLINE.findall(head) if ok(x)}) >= 3)
    if echoed:  # the option list repeated: only an explicit answer cue can be read
        return cue
    found = {ok(x) for x in _PAREN_LETTER.findall(head)} - {None}
    m = _LEADING_LETTER.match(head)
    if m and ok(m.group(2)) and len(found) <= 1:
        raw, bracketed = m.group(2), m.group(1) is not None
        if raw.islower() and not bracketed:
            lead_ok = re.match(r"[\).:]", head[m.end():]) is not None  # "b." / "b)" only
        else:
            lead_ok = _letter_stands_alone(head, m.end(), raw, options, bracketed)
        if lead_ok:
            return ok(raw)
    if cue:
        return cue
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:  # "(A) or (B)": ambiguous
        return None
    # option text: the options whose normalised text occurs in the reply; keep those not
    # contained in another matched option's text; exactly one -> that letter, else unreadable.
    norm = f" {normalize_text(head)} "
    hits = {L.upper(): normalize_text(t) for L, t in options.items()
            if normalize_text(t) and f" {normalize_text(t)} " in norm}
    maximal = {L for L, t in hits.items()
               if not any(t != u and t in u for u in hits.values())}
    return maximal.pop() if len(maximal) == 1 else None


# ----------------------------------------------------------------------------- labels

_LABEL_CUE = re.compile(r"(?:answer|label|relation|relationship|decision)\s*(?:is|:|=|-)\s*", re.I)


def parse_label(text: str, labels: Iterable[str],
                synonyms: Mapping[str, str] | None = None) -> str | None:
    """One of `labels` (returned in its given spelling) from free text.

    Matching is on normalised words ("indirect downregulator" == "INDIRECT-DOWNREGULATOR").
    Among label mentions, ones inside a longer mention are dropped ("agonist" inside
    "agonist inhibitor"); the first remaining mention after an "answer is"/"label:" cue, else the
    first in the reply, wins. `synonyms` maps extra phrases to labels ("entails" -> entailment).
    """
    if not text or not text.strip():
        return None
    phrases: dict[str, str] = {normalize_text(l): l for l in labels}
    for phrase, label in (synonyms or {}).items():
        phrases.setdefault(normalize_text(phrase), label)
    norm = f" {normalize_text(text)} "
    spans = []
    for phrase, label in phrases.items():
        for m in re.finditer(re.escape(f" {phrase} "), norm):
            spans.append((m.start(), m.start() + len(phrase) + 1, label))
    # drop spans strictly inside a longer one
    spans = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0])
                                         for o in spans)]
    if not spans:
        return None
    cue = _LABEL_CUE.search(text)
    if cue:
        cue_pos = len(f" {normalize_text(text[:cue.end()])} ") - 1
        after = [s for s in spans if s[0] >= cue_pos - 1]
        if after:
            return min(after)[2]
    return min(spans)[2]


YES_NO_MAYBE = ("yes", "no", "maybe")


_YES_NO_SYNONYMS = {"uncertain": "maybe", "not sure": "maybe", "unclear": "maybe", "possibly": "maybe",
                    "true": "yes", "false": "no"}
_SEGMENT = re.compile(r"[.;,!?:\n]+")


def parse_yes_no(text: str, allow_maybe: bool = True) -> str | None:
    """"yes" / "no" (/ "maybe") from a reply, without guessing.

    Read, in order: the label after an answer cue ("The answer is no", "Decision: yes"); the
    reply's first word ("No, because ..."); else the labels of the reply's clauses (split at
    punctuation), where "no" counts only as a clause's first word ("There is no evidence" is
    not an answer) and a synonym anywhere ("It is uncertain") counts: one label -> it, none or
    several -> None. "not sure", "uncertain", "unclear", "possibly" are maybe; "true" / "false"
    yes / no."""
    if not text or not text.strip():
        return None
    labels = YES_NO_MAYBE if allow_maybe else YES_NO_MAYBE[:2]
    words = {lab: lab for lab in labels}
    words.update({k: v for k, v in _YES_NO_SYNONYMS.items() if v in labels})

    def label_at_start(clause: str) -> str | None:
        norm = normalize_text(clause)
        for phrase in sorted(words, key=len, reverse=True):
            if norm == phrase or norm.startswith(phrase + " "):
                return words[phrase]
        return None

    cue = _LABEL_CUE.search(text)
    if cue:
        got = label_at_start(text[cue.end():])
        if got:
            return got
    if re.match(r"\W*(?:yes|no|maybe)\s*(?:or|/)\s*(?:yes|no|maybe)\b", text, re.I):
        return None  # "Yes or no ...": the question restated, not answered
    got = label_at_start(text)
    if got:
        return got
    found = set()
    for clause in _SEGMENT.split(text):
        first = label_at_start(clause)
        if first:
            found.add(first)
            continue
        norm = f" {normalize_text(clause)} "
        found.update(label for phrase, label in words.items() if phrase != "no" and f" {phrase} " in norm)
    return found.pop() if len(found) == 1 else None


NLI_LABELS = ("entailment", "contradiction", "neutral")
NLI_SYNONYMS = {"entails": "entailment", "entailed": "entailment", "entail": "entailment",
                "contradicts": "contradiction", "contradictory": "contradiction",
                "contradict": "contradiction", "neither": "neutral"}


def parse_nli(text: str) -> str | None:
    return parse_label(text, NLI_LABELS, NLI_SYNONYMS)


# ----------------------------------------------------------------------------- lists

_NONE_REPLY = re.compile(r"^\W*(none|no entities|no entity|nothing|n/?a|no (?:\w+ )?(?:mentions|entities|medications)(?: found)?)\W*$", re.I)
_BULLET = re.compile(r"^\s*(?:[-*•·]+|\d+[.)]|\(\d+\)|[a-z][.)](?=\s))\s*")
_PREFIX = re.compile(r"^\s*(?:entities|entity|mentions|chemicals?|diseases?|drugs?|genes?|answer|output)\s*:\s*", re.I)


def parse_list(text: str) -> list[str] | None:
    """Entity list from comma/semicolon/newline/bullet separated text; "None" -> [].
    An empty reply -> None (parse failure). Duplicates are kept once, first spelling wins."""
    if text is None or not text.strip():
        return None
    if _NONE_REPLY.match(text.strip()):
        return []
    items: list[str] = []
    for line in text.strip().splitlines():
        line = _PREFIX.sub("", _BULLET.sub("", line))
        for part in re.split(r"[;,]|\t", line):
            part = part.strip().strip("\"'`*").strip().rstrip(".").strip()
            if part and not _NONE_REPLY.match(part):
                items.append(part)
    seen, out = set(), []
    for it in items:
        key = normalize_text(it)
        if key and key not in seen:
            seen.add(key)
            out.append(it)
    return out


STATUS_SYNONYMS = {"active": "active", "current": "active", "ongoing": "active",
                   "discontinued": "discontinued", "stopped": "discontinued",
                   "held": "discontinued", "inactive": "discontinued", "neither": "neither",
                   "unknown": "neither", "other": "neither"}
_STATUS_WORDS = "|".join(sorted(STATUS_SYNONYMS, key=len, reverse=True))
_MED_ITEM = re.compile(rf"^(.*?)\s*(?:[:(\[\-–]|\bis\b)\s*({_STATUS_WORDS})\b\W*$", re.I)
_STATUS_HEADER = re.compile(rf"^\s*({_STATUS_WORDS})(?:\s+medications?)?\s*:\s*(.*)$", re.I)


def parse_medication_status(text: str) -> list[tuple[str, str]] | None:
    """[(medication, status)] with status in active/discontinued/neither.

    Reads "aspirin: active" / "aspirin (discontinued)" lines, and also grouped lines such as
    "Active: aspirin, metformin". "None" -> []; nothing readable -> None."""
    if text is None or not text.strip():
        return None
    if _NONE_REPLY.match(text.strip()):
        return []
    out: list[tuple[str, str]] = []
    for line in text.strip().splitlines():
        line = _BULLET.sub("", line).strip()
        if not line:
            continue
        m = _STATUS_HEADER.match(line)
        if m:
            status = STATUS_SYNONYMS[m.group(1).lower()]
            for name in parse_list(m.group(2)) or []:
                out.append((name, status))
            continue
        for part in re.split(r"[;,](?![^(]*\))", line):
            m = _MED_ITEM.match(part.strip())
            if m and m.group(1).strip().strip("\"'"):
                out.append((m.group(1).strip().strip("\"'"), STATUS_SYNONYMS[m.group(2).lower()]))
    return out or None


_SPAN_PREFIX = re.compile(r"^\s*(?:the\s+)?(?:antecedent|answer|output|it refers to|refers to)\s*(?:is|:)?\s*", re.I)


def parse_span(text: str) -> str | None:
    """A short answer span: first non-empty line, "Antecedent:" style prefixes and quotes removed."""
    if text is None:
        return None
    for line in text.strip().splitlines():
        line = _SPAN_PREFIX.sub("", line).strip().rstrip(".").strip().strip("\"'`*").strip()
        if line:
            return line
    return None
