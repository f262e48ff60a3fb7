"""BERTScore (Zhang et al. 2020) of generated text against references, with transformers + torch.

The algorithm of the `bert-score` package (whose 0.3.13 release fails under transformers 5 on a
tokenizer's unbounded `model_max_length`), computed from a local encoder folder: each text is
encoded with the tokenizer's special tokens; token embeddings are taken from hidden layer `layer`
(`hidden_states[layer]`, 1 = the first transformer layer) and L2-normalised; every candidate token
is matched to its most similar reference token (precision) and every reference token to its most
similar candidate token (recall); the special tokens ([CLS] / [SEP], <s> / </s>) may be matched
but carry weight 0 in the averages (bert-score's uniform weights: no idf, no baseline rescaling);
F1 = 2PR/(P+R). An empty candidate or reference scores 0. Scores are percentages (0-100), as the other metrics.

Default model: `roberta-large` at layer 17 (bert-score's English default), given as a local folder
(`--bertscore-model`); nothing is downloaded. torch is in the optional `metrics` extra.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

PAPER_DEFAULT_MODEL = "roberta-large"
EXTRA = "metrics"
# bert-score's tuned layers for common encoders, recognised by config shape (a local folder's
# name says nothing reliable): (model_type, layers, hidden) -> layer.
KNOWN_LAYERS = {("roberta", 24, 1024): 17, ("bert", 24, 1024): 18, ("bert", 12, 768): 9,
                ("roberta", 12, 768): 10, ("deberta", 48, 1024): 40}


def _torch() -> Any:
    try:
        import torch  # optional: only BERTScore needs it
    except ImportError:
        raise ImportError(f"BERTScore needs torch: pip install 'bioinstruct-jax[{EXTRA}]'") from None
    return torch


def default_layer(model_dir: str | pathlib.Path) -> int:
    """bert-score's tuned layer for a recognised encoder shape, else the last layer."""
    path = pathlib.Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--bertscore-model: cannot read {path}: {err}") from None
    n = int(cfg.get("num_hidden_layers", 0))
    if n < 1:
        raise ValueError(f"{path}: no num_hidden_layers; is this an encoder (BERT / RoBERTa) folder?")
    return KNOWN_LAYERS.get((cfg.get("model_type"), n, cfg.get("hidden_size")), n)


class BERTScorer:
    """Scores lists of candidates against references with one encoder loaded once."""

    def __init__(self, model_dir: str | pathlib.Path, *, layer: int | None = None, batch_size: int = 16,
                 max_length: int = 510):
        torch = _torch()
        from transformers import AutoModel, AutoTokenizer  # costly (seconds), and needs torch (optional)

        model_dir = pathlib.Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"--bertscore-model {model_dir}: not a folder (a local encoder such as "
                                    f"{PAPER_DEFAULT_MODEL}; nothing is downloaded)")
        self.model_dir = str(model_dir)
        self.layer = default_layer(model_dir) if layer is None else int(layer)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        n = self.model.config.num_hidden_layers
        if not 1 <= self.layer <= n:
            raise ValueError(f"--bertscore-layer {self.layer}: {model_dir} has layers 1..{n}")
        self.batch_size = batch_size
        limit = getattr(self.tokenizer, "model_max_length", max_length) or max_length
        self.max_length = min(int(limit), max_length + 2)
        # byte-level BPE encoders (RoBERTa, GPT-2) see a leading space on every word, as bert-score does
        self.prefix_space = type(self.tokenizer).__name__.startswith(("Roberta", "GPT2"))
        # weight 0 for the sequence's start and end tokens only, as bert-score ([UNK] counts)
        self.special = {t for t in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id,
                                    self.tokenizer.bos_token_id, self.tokenizer.eos_token_id) if t is not None}
        self._torch = torch

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_dir, "layer": self.layer, "idf": False, "rescaled": False}

    def _embed(self, texts: Sequence[str]) -> list[tuple[Any, Any]]:
        """Per text: (normalised embeddings of all its tokens [n, hidden], weights [n]: 0 for the
        special tokens, 1 for the others; all 0 for an empty text)."""
        torch = self._torch
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = [t.strip() for t in texts[i:i + self.batch_size]]
            enc = self.tokenizer([(" " if self.prefix_space else "") + t for t in chunk], add_special_tokens=True,
                                 truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            with torch.no_grad():
                hid = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 output_hidden_states=True).hidden_states[self.layer]
            for row, ids, mask, raw in zip(hid, enc["input_ids"], enc["attention_mask"], chunk):
                n = int(mask.sum())
                emb = row[:n].float() if self.tokenizer.padding_side == "right" else row[-n:].float()
                ids = ids[:n] if self.tokenizer.padding_side == "right" else ids[-n:]
                w = torch.tensor([0.0 if int(t) in self.special or not raw else 1.0 for t in ids])
                out.append((emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12), w))
        return out

    def score(self, preds: Sequence[str | None], refs: Sequence[str]) -> dict[str, float]:
        """Mean BERTScore precision / recall / F1 (%) over the pairs."""
        if len(preds) != len(refs):
            raise ValueError(f"bertscore: {len(preds)} predictions vs {len(refs)} references")
        if not preds:
            return {}
        cand = self._embed([p or "" for p in preds])
        ref = self._embed([str(r) for r in refs])
        tot = {"bertscore_precision": 0.0, "bertscore_recall": 0.0, "bertscore_f1": 0.0}
        for c, r in zip(cand, ref):
            p, rc, f = self.pair(c, r)
            tot["bertscore_precision"] += p
            tot["bertscore_recall"] += rc
            tot["bertscore_f1"] += f
        return {k: 100.0 * v / len(preds) for k, v in tot.items()}

    @staticmethod
    def pair(cand: tuple[Any, Any], ref: tuple[Any, Any]) -> tuple[float, float, float]:
        (ce, cw), (re_, rw) = cand, ref
        if float(cw.sum()) == 0 or float(rw.sum()) == 0:
            return 0.0, 0.0, 0.0
        sim = ce @ re_.T
        p = float((sim.max(dim=1).values * cw).sum() / cw.sum())
        r = float((sim.max(dim=0).values * rw).sum() / rw.sum())
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    def per_example(self, preds: Sequence[str | None], refs: Sequence[str]) -> list[float]:
        """F1 of each pair (0-1), for inspection and tests."""
        return [self.pair(c, r)[2] for c, r in zip(self._embed([p or "" for p in preds]),
                                                  self._embed([str(r) for r in refs]))]
