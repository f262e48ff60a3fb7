"""Text in, text out: the evaluation predictor over the decoding engine, and loading a model by path.

`JaxPredictor` adds a tokenizer to a `Generator` (infer/engine.py) and implements
`bioinstruct_jax.eval.predictor.Predictor`. Prompts start with BOS exactly when the tokenizer's
own rule says so (`adds_bos`; never twice when the text already begins with the BOS token), and
generation stops at every EOS id of the model config / `generation_config.json`, the tokenizer's
EOS and the chat template's end-of-turn token (`chat.stop_ids`); stop strings end decoding early
at the token level (`stop_token_sequences`) and cut the text (`trim_at_stop`).

`load_model` reads what a path holds: an HF directory or GGUF file (`checkpoint.hf.load_pretrained`),
or a training run (`checkpoint.restore.restore_run`, the one restore path). `load_predictor` builds
the predictor eval and the `generate` command use, with an optional `--adapter`: a PEFT adapter
(`checkpoint.peft.load_peft_adapter`) or a training run on the same base.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax

from bioinstruct_jax.checkpoint import gguf, orbax
from bioinstruct_jax.checkpoint.hf import load_pretrained
from bioinstruct_jax.checkpoint.integrity import pick_restore_step
from bioinstruct_jax.checkpoint.orbax import RunCheckpointer
from bioinstruct_jax.checkpoint.peft import is_peft_adapter, load_peft_adapter
from bioinstruct_jax.checkpoint.restore import restore_run
from bioinstruct_jax.data import chat
from bioinstruct_jax.data.cuts import CutTally, keep_end
from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer
from bioinstruct_jax.config.storage import as_path, is_remote, local_path
from bioinstruct_jax.infer.choice_scoring import ChoiceScorer
from bioinstruct_jax.infer.engine import Generator
from bioinstruct_jax.infer.sampling import SamplingConfig
from bioinstruct_jax.model import lora as lora_lib
from bioinstruct_jax.model.decoder import Llama
from bioinstruct_jax.parallel import sharding


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
        self.cuts = CutTally()
        self.last_cuts: list[int] = []

    def _encode_prompt(self, prompt: str) -> list[int]:
        if chat.starts_with_bos_text(self.tokenizer, prompt):
            return chat.encode_rendered(self.tokenizer, prompt)
        return self.tokenizer.encode(prompt, add_bos=self.add_bos)

    def generate(self, prompts: list[str], *, max_new_tokens: int, stop: list[str] | None = None) -> list[str]:
        budget = self.generator.prompt_budget(max_new_tokens)
        ids, self.last_cuts = [], []
        for p in prompts:
            kept, dropped = keep_end(self._encode_prompt(p), budget)
            ids.append(kept)
            self.last_cuts.append(dropped)
            self.cuts.add(dropped)
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
        self.last_cuts = []
        cut_pairs = []
        for p, c in pairs:  # the continuation is kept whole (the engine refuses one that cannot fit)
            kept, dropped = keep_end(p, max(self.generator.max_length - len(c), 0)) if c else (p, 0)
            cut_pairs.append((kept, c))
            self.last_cuts.append(dropped)
            self.cuts.add(dropped)
        return self.generator.score_continuations([p for p, _ in cut_pairs], [c for _, c in cut_pairs])

    def cut_note(self) -> str | None:
        """The one line saying how many prompts lost how many tokens so far (None when none did)."""
        return self.cuts.note("prompts", "their beginnings",
                              f"the context (max_length={self.generator.max_length}, less the slots kept "
                              f"for new tokens)")

    def choice_ids(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-evaluation-harness's split of a (context, continuation) pair: trailing whitespace of
        the context moves to the continuation, then the continuation's ids are those of
        context + continuation after the context's own ids (no check that they line up)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx = self._encode_prompt(context)
        return ctx, self._encode_prompt(context + continuation)[len(ctx):]

    def score_choices(self, contexts: list[str], continuations: list[list[str]]) -> list[list[float]]:
        """Per context, the log-likelihood of each of its continuations (`infer.choice_scoring`:
        one forward pass per item when every continuation is a single token)."""
        if getattr(self, "_choice_scorer", None) is None or self._choice_scorer.generator is not self.generator:
            self._choice_scorer = ChoiceScorer(self.generator)
        ctx_ids, cont_ids = [], []
        self.last_cuts = []
        for context, conts in zip(contexts, continuations, strict=True):
            pairs = [self.choice_ids(context, c) for c in conts]
            ctx = pairs[0][0] if pairs else self._encode_prompt(context)
            longest = max((len(c) for _, c in pairs), default=0)
            # one-token choices are read from the context's last logits; longer ones follow it
            kept, dropped = keep_end(ctx, self.generator.max_length - (longest if longest > 1 else 0))
            ctx_ids.append(kept)
            cont_ids.append([c for _, c in pairs])
            self.last_cuts += [dropped] * len(pairs)
            self.cuts.add(dropped)
        result = self._choice_scorer.score(ctx_ids, cont_ids)
        return result.scores


# ------------------------------------------------------------------------------------------------
# Loading


def is_hf_model(path: pathlib.Path) -> bool:
    """An HF checkpoint folder, or a GGUF file / a folder holding one."""
    if gguf.is_gguf(path):
        return True
    return (path / "config.json").is_file() and any(
        (path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                       "pytorch_model.bin.index.json"))


def resolve_mesh(mesh: Any) -> jax.sharding.Mesh | None:
    """None, a Mesh, a `sharding.MeshConfig`, a (data, fsdp, tensor) tuple / "d,f,t" string, or a dict."""
    if mesh is None or isinstance(mesh, jax.sharding.Mesh):
        return mesh
    if isinstance(mesh, str):
        mesh = tuple(int(x) for x in mesh.split(","))
    if isinstance(mesh, dict):
        mesh = sharding.MeshConfig(**mesh)
    return sharding.make_mesh(mesh)


def load_model(path: str | pathlib.Path, *, dtype: Any = "bfloat16", mesh: jax.sharding.Mesh | None = None,
               step: int | None = None) -> tuple[Llama, str | None]:
    """(model in eval mode, tokenizer path or None) from what `path` holds:

    - an HF LLaMA directory (config.json + weights) or a GGUF file / a folder holding one:
      `checkpoint.hf.load_pretrained`, params in `dtype`;
    - a training run's output dir (or its `checkpoints/` folder): base + LoRA restored by
      `checkpoint.restore.restore_run`, in the run's dtypes, at `step` (default latest).
    """
    p = as_path(path)  # local or gs://
    if not p.exists():
        raise FileNotFoundError(f"model path {p} does not exist")
    if not is_remote(p) and is_hf_model(pathlib.Path(p)):
        model, _ = load_pretrained(p, dtype=dtype, mesh=mesh)
        if mesh is not None:
            sharding.set_constraint(model, sharding.activation_constraint(mesh))
        model.eval()
        return model, str(p)
    if orbax.is_run(p):
        run = restore_run(str(p), step=step, mesh=mesh)
        return run.model, run.tokenizer
    local_path(p, "reading an HF / GGUF model (only training runs are read from a bucket)")
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
    if lora and not is_remote(lora) and is_peft_adapter(lora):
        net, tok_path = load_model(model, dtype=dtype, mesh=mesh, step=step)
        _add_peft_adapter(net, pathlib.Path(lora), mesh)
    elif lora:
        lora_path = as_path(lora)  # a training run, local or gs://
        if not orbax.is_run(lora_path):
            raise FileNotFoundError(f"--adapter {lora_path}: neither a PEFT adapter (adapter_config.json) nor a "
                                    f"training run directory with Orbax checkpoints")
        _check_same_base(model, lora_path, step)
        net, tok_path = load_model(lora_path, dtype=dtype, mesh=mesh, step=step)
    else:
        net, tok_path = load_model(model, dtype=dtype, mesh=mesh, step=step)
    if merge_lora:
        lora_lib.merge_lora(net)
    local_model = None if is_remote(model) else pathlib.Path(model)
    tok_path = tokenizer or tok_path or (model if local_model and is_hf_model(local_model) else None)
    if tok_path is None:
        raise ValueError(f"no tokenizer for {model}: pass tokenizer=PATH")
    tok = load_tokenizer(tok_path, pad_id=pad_id)
    hf_dir = local_model if local_model and (local_model / "config.json").is_file() else None
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
    if not path or not orbax.is_run(path):
        return None
    ckpt = RunCheckpointer(str(path), read_only=True)
    try:
        return ckpt.read_meta()["config"].get("data", {}).get("template") or None
    finally:
        ckpt.close()


def _add_peft_adapter(model: Llama, adapter_dir: pathlib.Path, mesh: jax.sharding.Mesh | None) -> None:
    """Load a PEFT LoRA adapter onto a base model (`checkpoint.peft.load_peft_adapter`), dropout off."""
    load_peft_adapter(model, adapter_dir, dropout=0.0)
    if mesh is not None:
        sharding.shard_model(model, mesh)  # places the new adapter weights by their logical axes
    model.eval()


def _check_same_base(model: str, run_dir: Any, step: int | None = None) -> None:
    """A LoRA run's saved base must be the `model` directory (compared by resolved path)."""
    ckpt = RunCheckpointer(str(run_dir), read_only=True)
    try:
        base = ckpt.read_meta(pick_restore_step(ckpt.directory, step))["config"]["model"].get("hf_path") or ""
    finally:
        ckpt.close()
    def resolved(path: Any) -> str:  # a URL as written, a local path resolved
        return str(path) if is_remote(path) else str(pathlib.Path(path).resolve())

    if resolved(model) == resolved(run_dir):
        return
    if not base or resolved(base) != resolved(model):
        raise ValueError(f"--adapter {run_dir} was trained on base {base or '(random preset)'!r}, "
                         f"not on --model {model}; pass --model {base or run_dir}")


__all__ = ["JaxPredictor", "load_predictor", "load_model", "is_hf_model", "resolve_mesh", "run_template",
           "stop_token_sequences", "trim_at_stop"]
