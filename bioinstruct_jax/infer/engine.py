"""Batched generation and continuation scoring for the NNX LLaMA, plus the evaluation predictor.

`Generator` works on token ids:
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
Without a mesh nothing from `parallel` is imported.

`JaxPredictor` adds a tokenizer and implements `bioinstruct_jax.eval.predictor.Predictor`;
`load_predictor` builds it from a path (HF directory, GGUF file, or a training run's Orbax
checkpoints, see `load_model_for_inference`). Prompts start with BOS exactly when the tokenizer's
own rule says so (`adds_bos`; never twice when the text already begins with the BOS token), and
generation stops at every EOS id of the model config / `generation_config.json`, the tokenizer's
EOS and the chat template's end-of-turn token (`chat.stop_ids`). `python -m
bioinstruct_jax.generate` prints generations: raw `--prompt` text, a question in the model's chat
template (`--chat`), or an instruction in a named template (`--template`, by default the one a
training run was trained with).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.cli import arguments as cli_types
from bioinstruct_jax.cli.arguments import non_negative_float, non_negative_int, positive_int, unit_interval
from bioinstruct_jax.data.records import read_utf8
from bioinstruct_jax.parallel.distributed import refuse_multi_process
from bioinstruct_jax.model.llama import (CACHE_KEY_AXES, CACHE_VALUE_AXES, KVCache, Llama, init_cache,
                                         padded_positions)
from bioinstruct_jax.infer.sampling import SamplingConfig, sample_next

# Stop table fillers: a required slot that no token equals, and a wildcard (shorter sequences are
# right-aligned and padded on the left with it).
_NEVER = -3
_ANY = -1
_TAIL_EMPTY = -2  # tail buffer before any token is generated


def next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


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
            from bioinstruct_jax.parallel import sharding as parallel

            self._batch_sharding = parallel.batch_sharding(mesh)
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
            ids = np.full((b, width), self.pad_id, np.int32)
            seg = np.zeros((b, width), np.int32)
            target = np.zeros((b, width), bool)
            for r, (p, c) in enumerate(pairs):
                if len(c) >= width:
                    raise ValueError(f"continuation of {len(c)} tokens does not fit max_length={self.max_length}")
                if len(p) + len(c) > width:
                    truncated += 1
                    p = p[len(p) + len(c) - width:]
                seq = p + c
                ids[r, :len(seq)] = seq
                seg[r, :len(seq)] = 1
                target[r, max(len(p), 1):len(seq)] = True  # a first token without context is not scored
            out = np.asarray(self._score_jit(self._state, *self._place(ids, seg, target)))
            for r, i in enumerate(rows):
                scores[i] = float(out[r])
        if truncated:
            warnings.warn(f"scoring: {truncated} of {len(prompts)} prompts lost their beginning to fit "
                          f"max_length={self.max_length}", stacklevel=2)
        return scores


def _ends_with_any(row: list[int], seqs: Sequence[Sequence[int]]) -> bool:
    return any(len(s) and row[-len(s):] == list(s) for s in seqs)


# ------------------------------------------------------------------------------------------------
# Text level: tokenizer + generator = the evaluation predictor


def stop_token_sequences(tokenizer: Any, stop: Sequence[str]) -> list[list[int]]:
    """Token sequences whose appearance in the generated tail means a stop string was produced.

    Each string is encoded alone and after a letter (its in-context form: SentencePiece adds a
    word-start piece to a string's beginning that the middle of a text does not have). The
    token-level check only ends decoding early; the text is always cut at the first stop string.
    """
    out: list[list[int]] = []
    anchor = tokenizer.encode("a")
    for s in stop:
        if not s:
            continue
        variants = [tokenizer.encode(s)]
        joined = tokenizer.encode("a" + s)
        if joined[:len(anchor)] == anchor and len(joined) > len(anchor):
            variants.append(joined[len(anchor):])
        for v in variants:
            if v and v not in out:
                out.append(v)
    return out


def trim_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """`text` up to the earliest occurrence of any stop string (the stop string removed)."""
    cut = len(text)
    for s in stop or ():
        if s:
            j = text.find(s)
            if 0 <= j < cut:
                cut = j
    return text[:cut]


class JaxPredictor:
    """`bioinstruct_jax.eval.predictor.Predictor` over a `Generator` and a tokenizer.

    Prompts get BOS when `add_bos` (default: the tokenizer's own rule, `adds_bos`), unless the text
    already starts with the BOS token (a chat template that writes it); such text is encoded with
    its special tokens as ids. Generation is greedy unless `sampling` says otherwise; sampled runs
    are reproducible from `seed` (call n uses fold_in(key(seed), n)). `template`: the prompt
    template callers should format instructions with (the run's, or "raw").
    """

    def __init__(self, generator: Generator, tokenizer: Any, *, sampling: SamplingConfig = SamplingConfig(),
                 seed: int = 0, add_bos: bool | None = None, template: str = "raw"):
        self.generator = generator
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.add_bos = bool(getattr(tokenizer, "adds_bos", True)) if add_bos is None else add_bos
        self.template = template
        self._key = jax.random.key(seed)
        self._calls = 0

    def _encode_prompt(self, prompt: str) -> list[int]:
        from bioinstruct_jax.data import chat

        if chat.starts_with_bos_text(self.tokenizer, prompt):
            return chat.encode_rendered(self.tokenizer, prompt)
        return self.tokenizer.encode(prompt, add_bos=self.add_bos)

    def generate(self, prompts: list[str], *, max_new_tokens: int, stop: list[str] | None = None) -> list[str]:
        ids = [self._encode_prompt(p) for p in prompts]
        key = jax.random.fold_in(self._key, self._calls)
        self._calls += 1
        result = self.generator.generate(ids, max_new_tokens=max_new_tokens, sampling=self.sampling, key=key,
                                         stop_ids=stop_token_sequences(self.tokenizer, stop or ()))
        return [trim_at_stop(self.tokenizer.decode(t), stop) for t in result.tokens]

    def continuation_ids(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        """(prompt ids, continuation ids): the continuation's tokens are those of prompt +
        continuation after the prompt's own tokens (tokenised together, as the model sees them)."""
        p = self._encode_prompt(prompt)
        whole = self._encode_prompt(prompt + continuation)
        if whole[:len(p)] == p:
            return p, whole[len(p):]
        return p, self.tokenizer.encode(continuation)

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]:
        pairs = [self.continuation_ids(p, c) for p, c in zip(prompts, continuations, strict=True)]
        return self.generator.score_continuations([p for p, _ in pairs], [c for _, c in pairs])


# ------------------------------------------------------------------------------------------------
# Loading


def _is_hf_dir(path: pathlib.Path) -> bool:
    """An HF checkpoint folder, or a GGUF file / a folder holding one."""
    from bioinstruct_jax.checkpoint.gguf import is_gguf

    if is_gguf(path):
        return True
    return (path / "config.json").is_file() and any(
        (path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                       "pytorch_model.bin.index.json"))


def _is_orbax_run(path: pathlib.Path) -> bool:
    from bioinstruct_jax.checkpoint.orbax import CHECKPOINT_SUBDIR

    if (path / CHECKPOINT_SUBDIR).is_dir():
        return True
    return path.is_dir() and any(p.name.isdigit() and p.is_dir() for p in path.iterdir())


def resolve_mesh(mesh: Any) -> jax.sharding.Mesh | None:
    """None, a Mesh, a `parallel.MeshConfig`, a (data, fsdp, tensor) tuple / "d,f,t" string, or a dict."""
    if mesh is None or isinstance(mesh, jax.sharding.Mesh):
        return mesh
    from bioinstruct_jax.parallel import sharding as parallel

    if isinstance(mesh, str):
        mesh = tuple(int(x) for x in mesh.split(","))
    if isinstance(mesh, dict):
        mesh = parallel.MeshConfig(**mesh)
    return parallel.make_mesh(mesh)


def load_model_for_inference(path: str | pathlib.Path, *, dtype: Any = "bfloat16", mesh: jax.sharding.Mesh | None = None,
                             step: int | None = None) -> tuple[Llama, str | None]:
    """(model in eval mode, tokenizer path or None) from what `path` holds:

    - an HF LLaMA directory (config.json + weights) or a GGUF file / a folder holding one:
      `checkpoint.hf.load_pretrained`, params in `dtype`;
    - a training run's output dir (or its `checkpoints/` folder): base + LoRA rebuilt by the training
      code (`train.restore_model`, the loader behind `checkpoint.orbax.load_model_for_inference`),
      in the run's dtypes, at `step` (default latest).
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model path {p} does not exist")
    if _is_hf_dir(p):
        from bioinstruct_jax.checkpoint.hf import load_pretrained

        model, _ = load_pretrained(p, dtype=dtype, mesh=mesh)
        if mesh is not None:
            from bioinstruct_jax.parallel import sharding as parallel

            parallel.set_constraint(model, parallel.activation_constraint(mesh))
        model.eval()
        return model, str(p)
    if _is_orbax_run(p):
        from bioinstruct_jax.train import loop as train

        model, _, tokenizer = train.restore_model(str(p), step=step, mesh=mesh)
        model.eval()
        return model, tokenizer or None
    raise FileNotFoundError(
        f"{p}: neither an HF checkpoint (config.json + model.safetensors / pytorch_model.bin) nor a training "
        f"run with Orbax checkpoints (a checkpoints/ folder or numbered step folders)")


def _default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load_predictor(model: str, lora: str | None = None, *, dtype: str | None = None, mesh: Any = None,
                   batch_size: int = 32, max_length: int | None = None, tokenizer: str | None = None,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   merge_lora: bool = True, step: int | None = None, add_bos: bool | None = None,
                   pad_id: int | None = None, template: str | None = None) -> JaxPredictor:
    """The JAX predictor the eval CLI uses.

    model: an HF LLaMA directory or a training run directory (Orbax, LoRA included).
    lora: a PEFT LoRA adapter directory (adapter_config.json) for the base `model`, or a training run
      directory whose LoRA weights go on top of `model` (its saved base must be the same HF directory).
    dtype: parameter / compute dtype for HF weights (default float32 on CPU, bfloat16 elsewhere).
    mesh: None (one device), a Mesh, or "data,fsdp,tensor" sizes; batch_size: rows per compiled batch
      (the largest bucket). merge_lora folds adapters into the base kernels (faster decode).
    add_bos: None = the tokenizer's own rule. template: the prompt template the predictor reports
      (`JaxPredictor.template`); None = the one the training run was trained with, else "raw".
    """
    mesh = resolve_mesh(mesh)
    dtype = dtype or _default_dtype()
    if lora and (pathlib.Path(lora) / "adapter_config.json").is_file():
        net, tok_path = load_model_for_inference(model, dtype=dtype, mesh=mesh, step=step)
        _add_peft_adapter(net, pathlib.Path(lora), mesh)
    elif lora:
        lora_path = pathlib.Path(lora)
        if not _is_orbax_run(lora_path):
            raise FileNotFoundError(f"--lora {lora_path}: neither a PEFT adapter (adapter_config.json) nor a "
                                    f"training run directory with Orbax checkpoints")
        _check_same_base(model, lora_path, step)
        net, tok_path = load_model_for_inference(lora_path, dtype=dtype, mesh=mesh, step=step)
    else:
        net, tok_path = load_model_for_inference(model, dtype=dtype, mesh=mesh, step=step)
    if merge_lora:
        from bioinstruct_jax.model.lora import merge_lora as _merge

        _merge(net)
    tok_path = tokenizer or tok_path or (model if _is_hf_dir(pathlib.Path(model)) else None)
    if tok_path is None:
        raise ValueError(f"no tokenizer for {model}: pass tokenizer=PATH")
    from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer

    from bioinstruct_jax.data import chat

    tok = load_tokenizer(tok_path, pad_id=pad_id)
    hf_dir = pathlib.Path(model) if (pathlib.Path(model) / "config.json").is_file() else None
    eos = tuple(chat.stop_ids(tok, net.config.eos_token_id, hf_dir))
    gen = Generator(net, mesh=mesh, max_length=max_length, max_batch_size=batch_size, pad_id=tok.pad_id,
                    eos_ids=eos)
    if template is None:
        template = run_template(lora) or run_template(model) or "raw"
    return JaxPredictor(gen, tok, sampling=SamplingConfig(temperature, top_k, top_p), seed=seed, add_bos=add_bos,
                        template=template)


def run_template(path: str | None) -> str | None:
    """The prompt template a training run at `path` was trained with (its saved config's
    `data.template`); None when `path` is not a training run."""
    if not path or not _is_orbax_run(pathlib.Path(path)):
        return None
    from bioinstruct_jax.checkpoint.orbax import RunCheckpointer

    ckpt = RunCheckpointer(str(path), read_only=True)
    try:
        return ckpt.read_meta()["config"].get("data", {}).get("template") or None
    finally:
        ckpt.close()


def _add_peft_adapter(model: Llama, adapter_dir: pathlib.Path, mesh: jax.sharding.Mesh | None) -> None:
    """Load a PEFT LoRA adapter onto a base model (`export.load_peft_adapter`), dropout off."""
    from bioinstruct_jax.export.merged import load_peft_adapter

    load_peft_adapter(model, adapter_dir, dropout=0.0)
    if mesh is not None:
        from bioinstruct_jax.parallel import sharding as parallel

        parallel.shard_model(model, mesh)  # places the new adapter weights by their logical axes
    model.eval()


def _check_same_base(model: str, run_dir: pathlib.Path, step: int | None = None) -> None:
    """A LoRA run's saved base must be the `model` directory (compared by resolved path)."""
    from bioinstruct_jax.checkpoint.integrity import pick_restore_step
    from bioinstruct_jax.checkpoint.orbax import RunCheckpointer

    ckpt = RunCheckpointer(str(run_dir), read_only=True)
    try:
        base = ckpt.read_meta(pick_restore_step(ckpt.directory, step))["config"]["model"].get("hf_path") or ""
    finally:
        ckpt.close()
    m = pathlib.Path(model)
    if m.resolve() == run_dir.resolve():
        return
    if not base or pathlib.Path(base).resolve() != m.resolve():
        raise ValueError(f"--lora {run_dir} was trained on base {base or '(random preset)'!r}, "
                         f"not on --model {model}; pass --model {base or run_dir}")


# ------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = cli_types.ArgumentParser(prog="python -m bioinstruct_jax.generate",
                                description="Generate text from an HF LLaMA directory or a training run.")
    p.add_argument("--model", required=True,
                   help="HF checkpoint directory, GGUF file (or a folder holding one), or training run directory")
    p.add_argument("--lora", help="PEFT adapter directory or training run directory with LoRA weights for --model")
    p.add_argument("--tokenizer", help="tokenizer path (default: the model / run's own)")
    p.add_argument("--prompt", action="append", default=[],
                   help=r"prompt text (repeatable); \n, \t and \\ are read as newline, tab, backslash unless "
                   "--no-escape. Sent as is, or as the instruction of --template")
    p.add_argument("--chat", action="append", default=[], metavar="QUESTION",
                   help="a user question in the model's own chat template (repeatable)")
    p.add_argument("--template", help="format each --prompt as an instruction in this template (alpaca, "
                   "bioinstruct_paper, chat) or 'raw' (as is); default: the training run's template, else raw")
    p.add_argument("--no-escape", action="store_true", help="keep backslashes in --prompt text literally")
    p.add_argument("--prompt-file", help="one prompt per line, or a .jsonl file with a 'prompt' field")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=non_negative_int, default=0)
    p.add_argument("--top-p", type=unit_interval, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", help="float32 / bfloat16 (default: float32 on CPU, bfloat16 elsewhere)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--mesh", help="data,fsdp,tensor sizes, e.g. 1,4,2 (default: one device)")
    p.add_argument("--no-merge-lora", action="store_true", help="keep LoRA adapters unmerged")
    p.add_argument("--jsonl", action="store_true", help="print one JSON object per prompt")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a training run (default: the latest)")
    cli_errors.add_debug_argument(p)
    return p


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    r"""`\n`, `\t`, `\\` in command-line text as newline, tab, backslash (llama.cpp's --escape)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = [p if args.no_escape else unescape(p) for p in args.prompt]
    if args.prompt_file:
        f = pathlib.Path(args.prompt_file)
        for n, line in enumerate(read_utf8(f).splitlines(), 1):
            if not line.strip():
                continue
            if f.suffix == ".jsonl":
                try:
                    prompts.append(json.loads(line)["prompt"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise SystemExit(f"{f}:{n}: expected a JSON object with a 'prompt' field ({err})") from None
            else:
                prompts.append(line.replace("\\n", "\n"))
    return prompts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refuse_multi_process("bioinstruct_jax.generate")  # one process; see distributed.py
    prompts = _read_prompts(args)
    if not prompts and not args.chat:
        raise SystemExit("no prompts: pass --prompt TEXT, --chat QUESTION or --prompt-file FILE")
    from bioinstruct_jax.data import templates

    if args.template is not None and args.template != "raw" and args.template not in templates.TEMPLATE_NAMES:
        raise SystemExit(f"--template {args.template!r}: known templates are raw, "
                         + ", ".join(templates.TEMPLATE_NAMES))
    predictor = load_predictor(args.model, args.lora, dtype=args.dtype, mesh=args.mesh, batch_size=args.batch_size,
                               tokenizer=args.tokenizer, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p, seed=args.seed, merge_lora=not args.no_merge_lora,
                               template=args.template, step=args.step)
    texts = [templates.render_prompt(predictor.template, p, tokenizer=predictor.tokenizer)
             if predictor.template != "raw" else p for p in prompts]
    texts += [templates.render_prompt("chat", q, tokenizer=predictor.tokenizer) for q in args.chat]
    prompts = prompts + list(args.chat)
    outputs = predictor.generate(texts, max_new_tokens=args.max_new_tokens, stop=args.stop or None)
    for i, (prompt, text) in enumerate(zip(prompts, outputs)):
        if args.jsonl:
            print(json.dumps({"prompt": prompt, "generation": text}, ensure_ascii=False))
        else:
            print(f"=== [{i}] {prompt}\n{text}\n")
    return 0


__all__ = ["Generator", "GenerationResult", "SamplingConfig", "JaxPredictor", "load_predictor",
           "load_model_for_inference", "run_template", "stop_token_sequences", "trim_at_stop", "batch_bucket", "next_power_of_two"]
