"""The decoding engine: batched generation and continuation scoring for the NNX LLaMA, on token ids.

`Generator`:
  - `generate`: left-pads a batch of prompts, runs one jitted program that does the prefill (all
    prompt tokens into a `KVCache`, first token sampled from the last position) and then a
    `lax.while_loop` decode that stops as soon as every row has produced EOS, matched a stop
    sequence, or reached `max_new_tokens`;
  - `score_continuations`: one forward pass per batch, summing the log-probabilities of each
    continuation's tokens given its prompt (multiple-choice tasks).
Shapes are bucketed so that a long evaluation compiles a handful of programs: batch sizes round up
to a power of two (padding rows are dropped afterwards), the number of new tokens to a power of two
(the real limit is a traced scalar), and the cache length (prompt + new tokens) to a power of two of
at least `min_length_bucket`; the prompt is left-padded to fill the cache minus the new-token
bucket, so prefill and decode share one compiled program per (batch, cache length, new tokens).
The model enters the jitted functions as `nnx.split` state (a pytree argument) with the graphdef
closed over, so programs are cached on shapes alone; `Generator.compilations` counts the traces.

With a mesh (`bioinstruct_jax.parallel.sharding`), the model is expected to be sharded already
(`shard_model` / `load_pretrained(mesh=...)`, which also set the activation constraints); inputs
are placed with `batch_sharding` (batch over data x fsdp), the KV cache is constrained to
(batch, -, kv_heads over tensor, -), and batch buckets are multiples of the data-parallel size.

Text in and out (tokenizer, stop strings, the evaluation predictor, loading a model from a path)
is `infer/predictor.py`; the `generate` command is `infer/cli.py`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bioinstruct_jax.infer.sampling import SamplingConfig, sample_next
from bioinstruct_jax.model.attention import CACHE_KEY_AXES, CACHE_VALUE_AXES, KVCache, init_cache
from bioinstruct_jax.model.decoder import Llama, padded_positions
from bioinstruct_jax.parallel import sharding

# Stop table fillers: a required slot that no token equals, and a wildcard (shorter sequences are
# right-aligned and padded on the left with it).
_NEVER = -3
_ANY = -1
_TAIL_EMPTY = -2  # tail buffer before any token is generated


def next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def length_bucket(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5x them) that holds n:
    padding wastes at most a third of a row instead of a half, for twice the compiled shapes."""
    p = next_power_of_two(n)
    return 3 * p // 4 if p >= 4 and 3 * p // 4 >= n else p


def default_cache_dtype(compute_dtype: Any) -> Any:
    """The compute dtype, except float32 on XLA:CPU: there bf16 dots run in f32 (XLA converts the
    weights once, outside the decode loop), and a bf16 cache would be converted whole, every layer,
    every step. The cached keys / values hold the same bf16-rounded numbers either way."""
    return jnp.float32 if jax.default_backend() == "cpu" else compute_dtype


def batch_bucket(n: int, multiple: int = 1) -> int:
    """Padded batch size for `n` rows: the next power of two, rounded up to `multiple`."""
    b = next_power_of_two(max(n, 1))
    return -(-b // multiple) * multiple


@dataclasses.dataclass
class GenerationResult:
    """Per prompt: generated ids (EOS removed, stop tokens kept) and why it ended
    ("eos", "stop" or "length"); `decode_steps`: forward passes of the while loop, per batch."""

    tokens: list[list[int]]
    finish_reasons: list[str]
    decode_steps: list[int]


class Generator:
    """Jitted batched generation / scoring over one model (see the module docstring).

    max_length: longest cache (prompt + new tokens) and scored sequence; longer prompts lose their
      beginning (a warning says so). Defaults to the model's max_position_embeddings.
    max_batch_size: larger inputs are processed in chunks of this many rows.
    eos_ids: tokens that end a row (default: the model config's eos_token_id).
    """

    def __init__(self, model: Llama, *, mesh: jax.sharding.Mesh | None = None, max_length: int | None = None,
                 max_batch_size: int = 32, min_length_bucket: int = 64, min_new_bucket: int = 16,
                 cache_dtype: Any = None, pad_id: int = 0, eos_ids: Sequence[int] | None = None):
        self.config = model.config
        self.mesh = mesh
        self.max_length = int(max_length or self.config.max_position_embeddings)
        self.max_batch_size = int(max_batch_size)
        self.min_length_bucket = int(min_length_bucket)
        self.min_new_bucket = int(min_new_bucket)
        self.cache_dtype = cache_dtype if cache_dtype is not None else default_cache_dtype(model.dtype)
        self.pad_id = int(pad_id)
        self.eos_ids = tuple(int(e) for e in (self.config.eos_token_id if eos_ids is None else eos_ids))
        self.compilations = {"generate": 0, "score": 0}
        self._dp = 1
        self._batch_sharding = None
        if mesh is not None:
            self._batch_sharding = sharding.batch_sharding(mesh)
            self._dp = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
        self.update(model)

    # -- model -------------------------------------------------------------------------------
    def update(self, model: Llama) -> None:
        """Use `model`'s current weights (e.g. after merging LoRA); retraces only if its
        structure changed."""
        graphdef, state = nnx.split(model)
        if getattr(self, "_graphdef", None) != graphdef:
            self._graphdef = graphdef
            self._generate_jit = jax.jit(self._generate_impl, static_argnames=("new_bucket", "greedy", "filtered"))
            self._score_jit = jax.jit(self._score_impl)
        self._state = state

    @property
    def total_compilations(self) -> int:
        return sum(self.compilations.values())

    # -- traced programs ---------------------------------------------------------------------
    def _constrain_cache(self, model: Llama, cache: KVCache) -> KVCache:
        c = model.constrain
        return KVCache(keys=tuple(c(k, CACHE_KEY_AXES) for k in cache.keys),
                       values=tuple(c(v, CACHE_VALUE_AXES) for v in cache.values),
                       valid=c(cache.valid, ("batch", "length")), index=cache.index)

    def _generate_impl(self, state, ids, segment_ids, key, max_new, stop_table, temperature, top_k, top_p,
                       *, new_bucket: int, greedy: bool, filtered: bool):
        self.compilations["generate"] += 1  # runs once per trace, i.e. per compiled program
        model = nnx.merge(self._graphdef, state)
        batch, prompt_len = ids.shape
        cache = self._constrain_cache(model, init_cache(self.config, batch, prompt_len + new_bucket,
                                                        self.cache_dtype))
        sample = lambda logits, step: sample_next(  # noqa: E731
            logits, None if greedy else jax.random.fold_in(key, step), greedy=greedy, filtered=filtered,
            temperature=temperature, top_k=top_k, top_p=top_p)

        positions = padded_positions(segment_ids)
        hidden, cache = model.hidden_states(ids, positions=positions, segment_ids=segment_ids, cache=cache,
                                            prefill=True)
        first = sample(model.logits(hidden[:, -1]), 0)  # left padding: the last slot is the last real token
        prompt_lens = jnp.sum(segment_ids > 0, axis=1).astype(jnp.int32)
        padding_row = prompt_lens == 0
        tail_len = stop_table.shape[1]

        def advance(tail, tok, done):
            shifted = jnp.concatenate([tail[:, 1:], tok[:, None]], axis=1)
            tail = jnp.where(done[:, None], tail, shifted)
            match = (stop_table[None] == _ANY) | (stop_table[None] == tail[:, None, :])  # [B, S, L]
            return tail, jnp.any(jnp.all(match, axis=-1), axis=-1)

        out = jnp.full((batch, new_bucket), self.pad_id, jnp.int32).at[:, 0].set(first)
        tail, hit = advance(jnp.full((batch, tail_len), _TAIL_EMPTY, jnp.int32), first, padding_row)
        done = padding_row | hit | (max_new <= 1)
        lengths = jnp.where(padding_row, 0, 1).astype(jnp.int32)

        def cond(carry):
            i, _, _, _, _, done, _ = carry
            return (i + 1 < max_new) & ~jnp.all(done)

        def body(carry):
            i, tok, cache, out, tail, done, lengths = carry  # tok = out[:, i]
            logits, cache = model(tok[:, None], positions=(prompt_lens + i)[:, None],
                                  segment_ids=jnp.ones_like(tok)[:, None], cache=cache)
            nxt = jnp.where(done, self.pad_id, sample(logits[:, -1], i + 1))
            out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], i + 1, axis=1)
            tail, hit = advance(tail, nxt, done)
            lengths = jnp.where(done, lengths, i + 2)
            done = done | hit | (i + 2 >= max_new)
            return i + 1, nxt, cache, out, tail, done, lengths

        carry = (jnp.int32(0), first, cache, out, tail, done, lengths)
        steps, _, _, out, _, _, lengths = jax.lax.while_loop(cond, body, carry)
        return out, lengths, steps

    def _score_impl(self, state, ids, segment_ids, target_mask):
        self.compilations["score"] += 1
        model = nnx.merge(self._graphdef, state)
        logits = model(ids, segment_ids=segment_ids)  # right padding: positions 0..T-1 are right
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        token_logp = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(target_mask[:, 1:], token_logp, 0.0), axis=1)

    # -- host side ---------------------------------------------------------------------------
    def _place(self, *arrays: np.ndarray):
        if self._batch_sharding is None:
            return tuple(jnp.asarray(a) for a in arrays)
        return tuple(jax.device_put(a, self._batch_sharding) for a in arrays)

    def _chunks(self, n: int) -> list[range]:
        step = max(1, self.max_batch_size)
        return [range(i, min(i + step, n)) for i in range(0, n, step)]

    def stop_table(self, stop_ids: Sequence[Sequence[int]], eos_ids: Sequence[int] | None = None) -> np.ndarray:
        """EOS ids plus the stop sequences as a right-aligned [rows, width] table; both dimensions
        are bucketed (rows >= 8, width >= 4, powers of two) to keep the program count low."""
        seqs = [(e,) for e in (self.eos_ids if eos_ids is None else eos_ids)]
        seqs += [tuple(int(t) for t in s) for s in stop_ids if len(s)]
        seqs = list(dict.fromkeys(seqs))
        rows = next_power_of_two(max(8, len(seqs)))
        width = next_power_of_two(max(4, max((len(s) for s in seqs), default=1)))
        table = np.full((rows, width), _NEVER, np.int32)
        for r, s in enumerate(seqs):
            table[r, :width - len(s)] = _ANY
            table[r, width - len(s):] = s
        return table

    def prompt_budget(self, max_new_tokens: int) -> int:
        """The most prompt tokens `generate` keeps with `max_new_tokens`: longer prompts lose their
        beginning (callers that report cuts cut to this first, `infer.predictor`)."""
        new_bucket = min(next_power_of_two(max(max_new_tokens, self.min_new_bucket)), self.max_length - 1)
        return self.max_length - new_bucket

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 sampling: SamplingConfig = SamplingConfig(), key: jax.Array | None = None,
                 stop_ids: Sequence[Sequence[int]] = (), eos_ids: Sequence[int] | None = None) -> GenerationResult:
        """Generate up to `max_new_tokens` ids after each prompt (lists of ids, BOS included if wanted).

        key: a PRNG key (required unless greedy); batch chunk c uses fold_in(key, c).
        stop_ids: token sequences that end a row once its generated tail equals one of them.
        eos_ids: overrides the generator's EOS ids for this call (same compiled program).
        """
        if not sampling.greedy and key is None:
            raise ValueError("Generator.generate: sampling with temperature > 0 needs an explicit key=")
        if max_new_tokens < 1:
            return GenerationResult([[] for _ in prompts], ["length"] * len(prompts), [])
        if max_new_tokens >= self.max_length:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in "
                             f"max_length={self.max_length}")
        key = jax.random.key(0) if key is None else key
        new_bucket = min(next_power_of_two(max(max_new_tokens, self.min_new_bucket)), self.max_length - 1)
        eos_ids = self.eos_ids if eos_ids is None else tuple(int(e) for e in eos_ids)
        table = jnp.asarray(self.stop_table(stop_ids, eos_ids))
        greedy, filtered = sampling.static_mode
        temperature, top_k, top_p = sampling.traced_values()
        eos = set(eos_ids)
        tokens: list[list[int]] = [[] for _ in prompts]
        reasons: list[str] = ["length"] * len(prompts)
        steps_per_chunk: list[int] = []
        truncated = 0
        for c, rows in enumerate(self._chunks(len(prompts))):
            chunk = [list(prompts[i]) for i in rows]
            longest = max(len(p) for p in chunk)
            total = min(max(next_power_of_two(longest + new_bucket), self.min_length_bucket), self.max_length)
            prompt_len = total - new_bucket
            if longest > prompt_len:
                truncated += sum(len(p) > prompt_len for p in chunk)
            b = batch_bucket(len(chunk), self._dp)
            ids = np.full((b, prompt_len), self.pad_id, np.int32)
            seg = np.zeros((b, prompt_len), np.int32)
            for r, p in enumerate(chunk):
                p = p[-prompt_len:]
                if p:
                    ids[r, prompt_len - len(p):] = p
                    seg[r, prompt_len - len(p):] = 1
            ids_d, seg_d = self._place(ids, seg)
            out, lengths, steps = self._generate_jit(
                self._state, ids_d, seg_d, jax.random.fold_in(key, c), jnp.int32(max_new_tokens), table,
                temperature, top_k, top_p, new_bucket=new_bucket, greedy=greedy, filtered=filtered)
            out, lengths = np.asarray(out), np.asarray(lengths)
            steps_per_chunk.append(int(steps))
            for r, i in enumerate(rows):
                if not chunk[r]:
                    continue  # an empty prompt has nothing to continue
                row = out[r, :lengths[r]].tolist()
                if row and row[-1] in eos:
                    tokens[i], reasons[i] = row[:-1], "eos"
                elif len(row) < max_new_tokens or _ends_with_any(row, stop_ids):
                    tokens[i], reasons[i] = row, "stop"
                else:
                    tokens[i] = row
        if truncated:
            warnings.warn(f"{truncated} of {len(prompts)} prompts lost their beginning to fit max_length="
                          f"{self.max_length} with {new_bucket} slots for new tokens", stacklevel=2)
        return GenerationResult(tokens, reasons, steps_per_chunk)

    def score_continuations(self, prompts: Sequence[Sequence[int]],
                            continuations: Sequence[Sequence[int]]) -> list[float]:
        """Sum of log p(continuation tokens | prompt) per pair (natural log); one forward per batch.

        Sequences longer than max_length lose the beginning of their prompt (with a warning).
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"score_continuations: {len(prompts)} prompts but {len(continuations)} continuations")
        scores = [0.0] * len(prompts)
        truncated = 0
        for rows in self._chunks(len(prompts)):
            pairs = [(list(prompts[i]), list(continuations[i])) for i in rows]
            longest = max(len(p) + len(c) for p, c in pairs)
            width = min(max(next_power_of_two(longest), self.min_length_bucket), self.max_length)
            b = batch_bucket(len(pairs), self._dp)
            ids, seg, kept, cut = pack_pairs(pairs, width, b, self.pad_id, self.max_length)
            truncated += cut
            target = np.zeros((b, width), bool)
            for r, (n, (_, c)) in enumerate(zip(kept, pairs)):
                target[r, max(n, 1):n + len(c)] = True  # a first token without context is not scored
            out = np.asarray(self._score_jit(self._state, *self._place(ids, seg, target)))
            for r, i in enumerate(rows):
                scores[i] = float(out[r])
        if truncated:
            warnings.warn(f"scoring: {truncated} of {len(prompts)} prompts lost their beginning to fit "
                          f"max_length={self.max_length}", stacklevel=2)
        return scores


def pack_pairs(pairs: Sequence[tuple[list[int], list[int]]], width: int, batch: int, pad_id: int,
               max_length: int) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """(ids [batch, width], segment ids, each row's kept context length, rows cut): each (context,
    continuation) pair left-aligned in its row; a pair longer than `width` loses the beginning of
    its context. A continuation that cannot fit with one context token is an error."""
    ids = np.full((batch, width), pad_id, np.int32)
    seg = np.zeros((batch, width), np.int32)
    kept, cut = [], 0
    for r, (p, c) in enumerate(pairs):
        if len(c) >= width:
            raise ValueError(f"a continuation of {len(c)} tokens does not fit max_length={max_length}")
        if len(p) + len(c) > width:
            cut += 1
            p = p[len(p) + len(c) - width:]
        ids[r, :len(p) + len(c)] = list(p) + list(c)
        seg[r, :len(p) + len(c)] = 1
        kept.append(len(p))
    return ids, seg, kept, cut


def _ends_with_any(row: list[int], seqs: Sequence[Sequence[int]]) -> bool:
    return any(len(s) and row[-len(s):] == list(s) for s in seqs)


__all__ = ["Generator", "GenerationResult", "batch_bucket", "default_cache_dtype", "length_bucket", "next_power_of_two", "pack_pairs"]
