"""Log-likelihoods of answer choices, batched, for multiple-choice evaluation.

`score_choices(generator, contexts, choices)` takes each item's context ids and its choices'
continuation ids and returns, per item, the summed log-probability of each continuation.

- When every choice of every item in a batch is one token after the same context (" A" / " B" /
  ..., " yes" / " no" / " maybe" for most tokenizers), the batch is ONE forward pass over the
  contexts: the next-token log-softmax at each context's last position, read at the choices' ids.
- Otherwise (cloze options, multi-token answers) the context goes through the model once per
  item: a prefill writes its keys / values into a cache, the cache is repeated for the item's
  choices, and the choices run as short rows on top of it (positions continuing the context's).
  A MedQA item of a 250-token question and four 10-token options is 250 + 4 x 10 token positions,
  not 4 x 260. Only the continuation positions go through the output layer.
- An item whose context plus longest choice exceeds the generator's `max_length` is scored as one
  row per (context, choice), cut from the left, so that the cut is the same as the reference's.

Sequences longer than the generator's `max_length` keep their last tokens (lm-eval's HF backend
does the same: `(context + continuation)[-(max_length + 1):][:-1]`); `truncated` counts them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bioinstruct_jax.infer.engine import Generator, batch_bucket, length_bucket, next_power_of_two, pack_pairs
from bioinstruct_jax.model.attention import KVCache, init_cache


@dataclasses.dataclass
class ChoiceScores:
    scores: list[list[float]]  # per item, per choice: sum of log p(continuation | context)
    forward_rows: int  # context rows that went through the model: one per item, or per (item, choice) for
    # the rows of items too long to share their context
    truncated: int  # items whose context lost its beginning to fit max_length


class ChoiceScorer:
    """Jitted choice scoring over a `Generator`'s model (its current weights, `Generator.update`)."""

    def __init__(self, generator: Generator, *, share_context: bool = True):
        """share_context=False scores every (context, choice) of a multi-token item as its own row
        (the layout before the shared prefill; kept for comparison, scripts/bench_cloze_sharing.py)."""
        self.generator = generator
        self.share_context = share_context
        self._next_jit = jax.jit(self._next_token_impl)
        self._cont_jit = jax.jit(self._continuation_impl)
        self._shared_jit = jax.jit(self._shared_context_impl)

    def _model(self, state):
        return nnx.merge(self.generator._graphdef, state)

    @staticmethod
    def _next_token_logp(model, hidden, last, cand):
        """[B, K]: log p(cand[b, k]) at position last[b], the next token after each context."""
        h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)  # [B, 1, D]
        logp = jax.nn.log_softmax(model.logits(h)[:, 0].astype(jnp.float32), axis=-1)  # [B, V]
        return jnp.take_along_axis(logp, cand, axis=1)

    def _next_token_impl(self, state, ids, seg, last, cand):
        model = self._model(state)
        hidden, _ = model.hidden_states(ids, segment_ids=seg)
        return self._next_token_logp(model, hidden, last, cand)

    def _continuation_impl(self, state, ids, seg, pos, tgt, mask):
        model = self._model(state)
        hidden, _ = model.hidden_states(ids, segment_ids=seg)
        h = jnp.take_along_axis(hidden, pos[:, :, None], axis=1)  # [B, C, D]: positions predicting targets
        logp = jax.nn.log_softmax(model.logits(h).astype(jnp.float32), axis=-1)
        tok = jnp.take_along_axis(logp, tgt[:, :, None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(mask, tok, 0.0), axis=1)

    def _shared_context_impl(self, state, ids, seg, last, first, opt_ids, opt_seg, opt_pos, tgt, mask):
        """Per item [B, K]: log p(choice | context), the context's forward shared by its K choices.

        ids / seg [B, W]: right-padded contexts; last [B]: each context's last position; first [B, K]:
        each choice's first token; opt_* [B*K, C]: the choices (row b*K + k), at positions after
        their context; tgt / mask [B*K, C]: position c predicts tgt[c] (the choice's token c+1)."""
        g = self.generator
        model = self._model(state)
        b, w = ids.shape
        k = first.shape[1]
        cache = g._constrain_cache(model, init_cache(g.config, b, w + opt_ids.shape[1], g.cache_dtype))
        hidden, cache = model.hidden_states(ids, segment_ids=seg, cache=cache, prefill=True)
        head = self._next_token_logp(model, hidden, last, first)  # [B, K]: each choice's first token
        rep = lambda a: jnp.repeat(a, k, axis=0)  # noqa: E731  row b -> rows b*K .. b*K + K-1
        cache = g._constrain_cache(model, KVCache(keys=tuple(rep(x) for x in cache.keys),
                                                  values=tuple(rep(x) for x in cache.values),
                                                  valid=rep(cache.valid), index=cache.index))
        hidden, _ = model.hidden_states(opt_ids, positions=opt_pos, segment_ids=opt_seg, cache=cache)
        logp = jax.nn.log_softmax(model.logits(hidden).astype(jnp.float32), axis=-1)  # [B*K, C, V]
        tok = jnp.take_along_axis(logp, tgt[:, :, None], axis=-1)[..., 0]
        rest = jnp.sum(jnp.where(mask, tok, 0.0), axis=1).reshape(b, k)
        return head + rest

    def _place(self, *arrays: np.ndarray):
        return self.generator._place(*arrays)

    def score(self, contexts: Sequence[Sequence[int]], choices: Sequence[Sequence[Sequence[int]]]) -> ChoiceScores:
        if len(contexts) != len(choices):
            raise ValueError(f"score_choices: {len(contexts)} contexts but {len(choices)} choice lists")
        for i, (ctx, ch) in enumerate(zip(contexts, choices)):
            if not ctx:
                raise ValueError(f"score_choices: item {i} has an empty context (nothing to condition on)")
            if any(not c for c in ch):
                raise ValueError(f"score_choices: item {i} has a choice with no tokens")
        out: list[list[float]] = [[0.0] * len(ch) for ch in choices]
        single = [i for i, ch in enumerate(choices) if ch and all(len(c) == 1 for c in ch)]
        multi = [i for i, ch in enumerate(choices) if ch and not all(len(c) == 1 for c in ch)]
        rows = truncated = 0
        step = max(1, self.generator.max_batch_size)
        for start in range(0, len(single), step):
            items = single[start:start + step]
            t, n = self._single_token_batch(items, contexts, choices, out)
            rows, truncated = rows + n, truncated + t
        fits = [i for i in multi if self.share_context and self._can_share(len(contexts[i]), max(map(len, choices[i])))]
        for start in range(0, len(fits), step):
            rows += self._shared_context_batch(fits[start:start + step], contexts, choices, out)
        shared = set(fits)
        flat = [(i, j) for i in multi if i not in shared for j in range(len(choices[i]))]
        for start in range(0, len(flat), step):
            pairs = flat[start:start + step]
            t, n = self._continuation_batch(pairs, contexts, choices, out)
            rows, truncated = rows + n, truncated + t
        return ChoiceScores(out, rows, truncated)

    def _can_share(self, n_context: int, n_choice: int) -> bool:
        """Whether an item can go through the shared prefill: it fits max_length uncut, and a
        sliding window (Mistral) cannot fall inside its cache, whose slots run past the context's
        right padding (the window is measured in slots there, not in positions)."""
        g = self.generator
        window = g.config.sliding_window
        return n_context + n_choice <= g.max_length and (
            window is None or g.max_length + next_power_of_two(n_choice) <= window)

    def _width(self, longest: int) -> int:
        """Row width for contexts of up to `longest` tokens: 1.5x steps between powers of two (a
        PubMedQA context of 520 tokens pads to 768, not 1,024)."""
        g = self.generator
        return min(max(length_bucket(longest), g.min_length_bucket), g.max_length)

    def _context_rows(self, items, contexts) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], int]:
        """(ids, segment ids, last positions, kept lengths, rows cut): each item's context
        right-padded in its row of the bucketed width; a longer one keeps its last tokens."""
        g = self.generator
        width = self._width(max(len(contexts[i]) for i in items))
        b = batch_bucket(len(items), g._dp)
        ids = np.full((b, width), g.pad_id, np.int32)
        seg = np.zeros((b, width), np.int32)
        last = np.zeros((b,), np.int32)
        kept, truncated = [], 0
        for r, i in enumerate(items):
            ctx = list(contexts[i])
            if len(ctx) > width:
                truncated += 1
                ctx = ctx[-width:]
            ids[r, :len(ctx)] = ctx
            seg[r, :len(ctx)] = 1
            last[r] = len(ctx) - 1
            kept.append(len(ctx))
        return ids, seg, last, kept, truncated

    def _single_token_batch(self, items, contexts, choices, out) -> tuple[int, int]:
        g = self.generator
        ids, seg, last, _, truncated = self._context_rows(items, contexts)
        cand = np.zeros((ids.shape[0], next_power_of_two(max(len(choices[i]) for i in items))), np.int32)
        for r, i in enumerate(items):
            cand[r, :len(choices[i])] = [c[0] for c in choices[i]]
        res = np.asarray(self._next_jit(g._state, *self._place(ids, seg, last, cand)))
        for r, i in enumerate(items):
            out[i] = [float(x) for x in res[r, :len(choices[i])]]
        return truncated, len(items)

    def _shared_context_batch(self, items, contexts, choices, out) -> int:
        g = self.generator
        ids, seg, last, kept, _ = self._context_rows(items, contexts)  # they fit: nothing is cut
        c_width = next_power_of_two(max(len(c) for i in items for c in choices[i]))
        k = max(len(choices[i]) for i in items)
        b = ids.shape[0]
        first = np.zeros((b, k), np.int32)
        opt_ids = np.full((b * k, c_width), g.pad_id, np.int32)
        opt_seg = np.zeros((b * k, c_width), np.int32)
        opt_pos = np.zeros((b * k, c_width), np.int32)
        tgt = np.zeros((b * k, c_width), np.int32)
        mask = np.zeros((b * k, c_width), bool)
        for r, (i, n_ctx) in enumerate(zip(items, kept)):
            for j, cont in enumerate(choices[i]):
                n, row = len(cont), r * k + j
                first[r, j] = cont[0]
                opt_ids[row, :n] = cont
                opt_seg[row, :n] = 1
                opt_pos[row, :n] = np.arange(n_ctx, n_ctx + n)
                tgt[row, :n - 1] = cont[1:]
                mask[row, :n - 1] = True
        res = np.asarray(self._shared_jit(g._state, *self._place(ids, seg, last, first, opt_ids, opt_seg,
                                                                   opt_pos, tgt, mask)))
        for r, i in enumerate(items):
            out[i] = [float(x) for x in res[r, :len(choices[i])]]
        return len(items)

    def _continuation_batch(self, pairs, contexts, choices, out) -> tuple[int, int]:
        g = self.generator
        width = self._width(max(len(contexts[i]) + len(choices[i][j]) for i, j in pairs))
        c_width = next_power_of_two(max(len(choices[i][j]) for i, j in pairs))
        b = batch_bucket(len(pairs), g._dp)
        ids, seg, kept, truncated = pack_pairs([(contexts[i], choices[i][j]) for i, j in pairs], width, b,
                                               g.pad_id, g.max_length)
        pos = np.zeros((b, c_width), np.int32)
        tgt = np.zeros((b, c_width), np.int32)
        mask = np.zeros((b, c_width), bool)
        for r, (n_ctx, (i, j)) in enumerate(zip(kept, pairs)):
            cont = list(choices[i][j])
            n = len(cont)
            pos[r, :n] = np.arange(n_ctx - 1, n_ctx + n - 1)
            tgt[r, :n] = cont
            mask[r, :n] = True
        res = np.asarray(self._cont_jit(g._state, *self._place(ids, seg, pos, tgt, mask)))
        for r, (i, j) in enumerate(pairs):
            out[i][j] = float(res[r])
        return truncated, len(pairs)
