"""Performance benchmarks: LoRA train step, generation, data, memory and planner figures.

    .venv/bin/python scripts/benchmark.py --json bench.json            # full CPU run (~10-15 min)
    .venv/bin/python scripts/benchmark.py --quick --only train,data    # smoke run (< 1 min)
    .venv/bin/python scripts/benchmark.py --device --only train,generate   # on a GPU / TPU

Sections (`--only`, comma-separated; default all): peak, train, generate, data, memory, plan.

- peak: a large f32 and bf16 matmul, timed with jax and torch in this run (best of several);
  every MFU below is against the measured f32 figure on the CPU (the larger of jax's and torch's
  best-of-N, as both time the same cores and the larger is the one least disturbed by other
  load); with `--device`, against the chip's datasheet bf16 peak.
- train: our jitted LoRA train step (`train_step.build_train_step`) vs transformers + peft + torch
  AdamW on the same model (an HF `LlamaForCausalLM` with random weights, saved with
  `save_pretrained` and loaded by us with `checkpoint.hf.load_pretrained`), same batch, LoRA r=16 /
  alpha 32 on q,k,v,o, dropout 0 on both sides (dropout only adds RNG noise), grad-norm clip 1.0.
  Steps of the two sides are interleaved (ours, theirs, ours, ...) so that load from other
  processes on the machine hits both alike; figures are medians after warm-up.
- generate: greedy, prompt P, N new tokens (no EOS stop), batch 1/8/32, ours (jitted prefill +
  `lax.while_loop` decode with a KV cache) vs `transformers.generate` (KV cache) on the same
  weights. TTFT = prefill + first token; decode tok/s = batch * (N - 1) / (total - TTFT).
- data: ROUGE-L pool filter (instructions/s against a pool of 25K synthetic instructions) and the
  input pipeline (examples/s tokenised and batched) next to what the train step consumes.
- memory: peak host RSS (VmHWM) of a fresh process running the train step, and the peak growth of a merged export.
- plan: `bioinstruct_jax.plan` for LLaMA-2 7B/13B on v3-8, v4-8, one A100-80 and one H100.

FLOP convention for LoRA training (frozen base): per token, forward 2*N + backward activation
gradients 2*N (no weight gradients for the frozen base), N = matmul parameters (every projection
and the LM head, not the embedding lookup); plus LoRA adapters 2*r*(in+out) forward, twice that
backward (activation and weight gradients); plus attention 4*T*d per layer forward (QK^T and PV
over the full T x T, PaLM's convention; a causal kernel may skip half) and twice that backward.
The "6*N*T" figure (the full-fine-tuning convention) is printed for reference.

Dtypes: on the CPU everything runs in float32 on both sides (parameters, activations, matmuls),
because the comparison must be like with like and f32 is the dtype both libraries run well here;
the bf16 matmul rates are printed so the choice can be checked. With `--device`, bf16 parameters
and matmuls (f32 LoRA weights, softmax and logits), MFU against the chip's bf16 peak.

The benchmark runs with one JAX device (it strips `--xla_force_host_platform_device_count` from
XLA_FLAGS, which the test conftest sets) and lets XLA and torch use every core. OPENBLAS_* and
other environment variables are left as they are (they affect torch only) and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
if _flags:
    os.environ["XLA_FLAGS"] = _flags
else:
    os.environ.pop("XLA_FLAGS", None)

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

SECTIONS = ("peak", "train", "generate", "data", "memory", "plan")
# The planner compiles 7B/13B steps for ~1-2 min each on 2 cores, so it runs only when asked.
DEFAULT_SECTIONS = ("peak", "train", "generate", "data", "memory")

# Dense bf16 peak FLOP/s per JAX device, by device_kind substring (datasheets).
CHIP_PEAK_BF16 = {
    "TPU v2": 22.5e12, "TPU v3": 61.5e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6": 918e12, "H200": 989e12, "H100": 989e12,
    "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12,
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    preset: str = "bench-150m"
    train_batch: int = 2
    seq: int = 512
    train_steps: int = 5
    warmup: int = 2
    gen_batches: tuple[int, ...] = (1, 8, 32)
    prompt: int = 128
    new_tokens: int = 128
    gen_reps: int = 2
    rouge_pool: int = 25000
    rouge_candidates: int = 500
    matmul_n: int = 4096
    lora_r: int = 16
    model: str = ""  # a pretrained GGUF file / HF folder instead of the random preset


QUICK = Sizes(preset="small", train_batch=2, seq=128, train_steps=3, warmup=1, gen_batches=(1, 8),
              prompt=32, new_tokens=16, gen_reps=1, rouge_pool=2000, rouge_candidates=100, matmul_n=1024)


def log(msg: str) -> None:
    print(msg, flush=True)


def median(xs):
    return float(statistics.median(xs))


# ------------------------------------------------------------------------------------------------
# Peak matmul rates


def matmul_peak(n: int, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of an n x n x n matmul: jax f32/bf16, torch f32/bf16 (best of reps)."""
    import torch

    out = {}
    flops = 2.0 * n**3
    for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
        f = jax.jit(jnp.dot)
        f(a, b).block_until_ready()
        best = min(_timeit(lambda: f(a, b).block_until_ready()) for _ in range(reps))
        out[f"jax_{name}_gflops"] = flops / best / 1e9
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        a @ b
        t1 = _timeit(lambda: a @ b)
        r = reps if t1 < 5 else 1  # a slow bf16 path would take minutes
        best = min([t1] + [_timeit(lambda: a @ b) for _ in range(r - 1)])
        out[f"torch_{name}_gflops"] = flops / best / 1e9
    return out


def _timeit(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Model construction (same weights on both sides)


def hf_model(preset: str, seed: int = 0, model: str = ""):
    """A random-weight f32 transformers LlamaForCausalLM of our preset's shape, or with `model`
    (a GGUF file, dequantized by transformers' own GGUF loader, or an HF folder) that model in f32."""
    import torch
    import transformers

    from bioinstruct_jax.model.llama import LlamaConfig

    if model:
        path = pathlib.Path(model)
        if path.suffix == ".gguf":
            loaded = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                       dtype=torch.float32)
            hf_cfg = loaded.config
            if hasattr(hf_cfg, "quantization_config"):  # dequantized: a plain model that save_pretrained writes
                del hf_cfg.quantization_config
            plain = transformers.LlamaForCausalLM(hf_cfg)
            plain.load_state_dict(loaded.state_dict(), strict=False)
            plain.tie_weights()
            loaded = plain
        else:
            loaded = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return loaded.float().eval(), LlamaConfig.from_hf(loaded.config.to_dict())
    cfg = LlamaConfig.preset(preset)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf("float32").items()
                                         if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hf_cfg).float().eval()
    return model, cfg


def save_hf(model, directory: pathlib.Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def load_ours(directory: pathlib.Path, dtype=jnp.float32):
    from bioinstruct_jax.checkpoint.hf import load_pretrained

    return load_pretrained(directory, dtype=dtype)


def train_flops_per_token(cfg, seq: int, lora_r: int, lora_targets: int = 4) -> dict[str, float]:
    d, f, v, hd = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.resolved_head_dim
    L, nh, nkv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    attn_params = d * hd * (2 * nh + 2 * nkv)
    n_mm = L * (attn_params + 3 * d * f) + d * v  # projections + LM head
    q, kv, o = (d, nh * hd), (d, nkv * hd), (nh * hd, d)
    lora_in_out = sum(i + o_ for i, o_ in (q, kv, kv, o)[:lora_targets])
    lora = L * lora_r * lora_in_out
    attn_fwd = 4 * L * seq * nh * hd  # per token: QK^T and PV over the full T x T
    ours = 2 * n_mm + 2 * n_mm + 2 * lora + 4 * lora + attn_fwd + 2 * attn_fwd
    return {"n_matmul_params": n_mm, "lora_flops_per_token": ours, "six_n_per_token": 6 * n_mm + 3 * attn_fwd}


# ------------------------------------------------------------------------------------------------
# Train step


def random_batch(vocab: int, b: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(3, vocab, (b, t + 1)).astype(np.int32)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((b, t), np.float32),
            "segment_ids": np.ones((b, t), np.int32),
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()}


class OursTrain:
    """Our jitted LoRA step on a loaded model; `step()` runs one and blocks."""

    def __init__(self, model, cfg, batch_np, lora_r: int, dtype=jnp.float32):
        from flax import nnx

        from bioinstruct_jax import train_step as ts
        from bioinstruct_jax.model.lora import LoraConfig, apply_lora
        from bioinstruct_jax.train_config import OptimConfig

        apply_lora(model, LoraConfig(r=lora_r, alpha=2.0 * lora_r, dropout=0.0), nnx.Rngs(1))
        graphdef, self.lora, self.rng, self.base = ts.split_model(model)
        tx = ts.make_optimizer(OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant", grad_clip=1.0), 1000)
        self.opt = ts.init_optimizer(tx, self.lora)
        self.batch = {k: jnp.asarray(v)[None] for k, v in batch_np.items()}  # [k=1, b, T]
        t0 = time.perf_counter()
        self.compiled = ts.build_train_step(graphdef, tx).lower(
            self.lora, self.opt, self.base, self.rng, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.loss = float("nan")

    def step(self) -> float:
        t0 = time.perf_counter()
        self.lora, self.opt, self.rng, metrics = self.compiled(self.lora, self.opt, self.base, self.rng, self.batch)
        jax.block_until_ready(metrics)
        dt = time.perf_counter() - t0
        self.loss = float(metrics["loss"])
        return dt


class TheirsTrain:
    """transformers + peft LoRA, torch AdamW, the same loss and clipping."""

    def __init__(self, hf, batch_np, lora_r: int):
        import peft
        import torch

        self.torch = torch
        self.model = peft.get_peft_model(hf, peft.LoraConfig(
            r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.0)
        self.ids = torch.from_numpy(batch_np["input_ids"]).long()
        self.targets = torch.from_numpy(batch_np["targets"]).long()
        self.loss = float("nan")

    def step(self) -> float:
        torch = self.torch
        t0 = time.perf_counter()
        logits = self.model(input_ids=self.ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), self.targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss = float(loss.detach())
        return time.perf_counter() - t0


def tiny_compile_seconds() -> float:
    """Fresh compile of the tiny default's train step (configs/tiny.yaml shapes: batch 8, seq 384,
    adapters on every projection and the LM head)."""
    from flax import nnx

    from bioinstruct_jax import train_step as ts
    from bioinstruct_jax.model.llama import Llama, LlamaConfig
    from bioinstruct_jax.model.lora import LoraConfig, apply_lora
    from bioinstruct_jax.train_config import OptimConfig

    cfg = LlamaConfig.preset("tiny")
    model = Llama(cfg, rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(r=16, alpha=32, dropout=0.05,
                                 target_regex=r"(layers/\d+/(self_attn|mlp)/\w+_proj)|lm_head"), nnx.Rngs(1))
    graphdef, lora, rng, base = ts.split_model(model)
    tx = ts.make_optimizer(OptimConfig(), 240)
    opt = ts.init_optimizer(tx, lora)
    batch = {k: jnp.asarray(v)[None] for k, v in random_batch(cfg.vocab_size, 8, 384).items()}
    t0 = time.perf_counter()
    ts.build_train_step(graphdef, tx).lower(lora, opt, base, rng, batch).compile()
    return time.perf_counter() - t0


def bench_train(sizes: Sizes, peak_flops: float, workdir: pathlib.Path, device: bool) -> dict[str, Any]:
    import torch

    hf, cfg = hf_model(sizes.preset, model=sizes.model)
    directory = workdir / "hf_model"
    if not directory.exists():
        save_hf(hf, directory)
    dtype = jnp.bfloat16 if device else jnp.float32
    model, _ = load_ours(directory, dtype=dtype)
    batch = random_batch(cfg.vocab_size, sizes.train_batch, sizes.seq)
    ours = OursTrain(model, cfg, batch, sizes.lora_r, dtype)
    theirs = None if device else TheirsTrain(hf, batch, sizes.lora_r)
    for _ in range(sizes.warmup):
        ours.step()
        if theirs:
            theirs.step()
    t_ours, t_theirs = [], []
    for _ in range(sizes.train_steps):
        t_ours.append(ours.step())
        if theirs:
            t_theirs.append(theirs.step())
    tokens = sizes.train_batch * sizes.seq
    fl = train_flops_per_token(cfg, sizes.seq, sizes.lora_r)
    res: dict[str, Any] = {
        "preset": sizes.model or sizes.preset, "params": cfg.num_params(), "n_matmul_params": fl["n_matmul_params"],
        "batch": sizes.train_batch, "seq": sizes.seq, "lora_r": sizes.lora_r, "dtype": "bfloat16" if device else "float32",
        "compile_s": ours.compile_s, "ours_step_s": median(t_ours), "ours_steps_s": t_ours,
        "ours_tokens_per_s": tokens / median(t_ours), "ours_loss": ours.loss,
        "flops_per_token": fl["lora_flops_per_token"], "six_n_flops_per_token": fl["six_n_per_token"],
        "peak_flops": peak_flops, "device": str(jax.devices()[0].device_kind),
    }
    res["ours_mfu"] = res["ours_tokens_per_s"] * fl["lora_flops_per_token"] / peak_flops
    res["ours_mfu_6nt"] = res["ours_tokens_per_s"] * fl["six_n_per_token"] / peak_flops
    if theirs:
        res.update({"theirs_step_s": median(t_theirs), "theirs_steps_s": t_theirs,
                    "theirs_tokens_per_s": tokens / median(t_theirs), "theirs_loss": theirs.loss,
                    "torch_threads": torch.get_num_threads()})
        res["theirs_mfu"] = res["theirs_tokens_per_s"] * fl["lora_flops_per_token"] / peak_flops
        res["ratio_ours_over_theirs"] = res["ours_tokens_per_s"] / res["theirs_tokens_per_s"]
    return res


# ------------------------------------------------------------------------------------------------
# Generation


def _our_generator(model, cfg, batch: int, prompt: int, new: int):
    """(prefill_fn, full_fn) for greedy decoding: the generation engineer's API when present,
    else a minimal jitted prefill + lax.while_loop decode over the model's KV cache."""
    from flax import nnx

    from bioinstruct_jax.model.llama import init_cache

    graphdef, state = nnx.split(model)
    cache_dtype = model.dtype

    def prefill(state, ids):
        m = nnx.merge(graphdef, state)
        cache = init_cache(cfg, batch, prompt + new, cache_dtype)
        seg = jnp.ones_like(ids)
        pos = jnp.broadcast_to(jnp.arange(prompt, dtype=jnp.int32), ids.shape)
        hidden, cache = m.hidden_states(ids, positions=pos, segment_ids=seg, cache=cache)
        first = jnp.argmax(m.logits(hidden[:, -1:]), axis=-1).astype(jnp.int32)  # [B, 1]
        return first, cache

    def generate(state, ids):
        m = nnx.merge(graphdef, state)
        first, cache = prefill(state, ids)
        out = jnp.zeros((batch, new), jnp.int32).at[:, 0].set(first[:, 0])

        def body(carry):
            i, tok, cache, out = carry
            pos = jnp.full((batch, 1), prompt, jnp.int32) + i - 1
            logits, cache = m(tok, positions=pos, segment_ids=jnp.ones_like(tok), cache=cache)
            nxt = jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)
            out = jax.lax.dynamic_update_slice_in_dim(out, nxt, i, axis=1)
            return i + 1, nxt, cache, out

        _, _, _, out = jax.lax.while_loop(lambda c: c[0] < new, body, (jnp.int32(1), first, cache, out))
        return out

    return jax.jit(prefill), jax.jit(generate), state


def _generator_api(model, ids_np: np.ndarray, new: int) -> dict[str, Any]:
    """End-to-end time of `bioinstruct_jax.generate.Generator.generate` (greedy, EOS disabled so
    every row makes `new` tokens; includes its host-side padding and bucketing)."""
    from bioinstruct_jax.generate import Generator

    gen = Generator(model, max_batch_size=max(32, len(ids_np)), eos_ids=())
    prompts = [list(map(int, r)) for r in ids_np]
    t0 = time.perf_counter()
    first = gen.generate(prompts, max_new_tokens=new)
    compile_s = time.perf_counter() - t0
    t = _timeit(lambda: gen.generate(prompts, max_new_tokens=new))
    made = sum(len(x) for x in first.tokens) if hasattr(first, "tokens") else len(prompts) * new
    return {"generator_api_first_call_s": compile_s, "generator_api_total_s": t,
            "generator_api_e2e_tok_s": made / t}


def bench_generate(sizes: Sizes, workdir: pathlib.Path, device: bool) -> dict[str, Any]:
    import torch

    hf, cfg = hf_model(sizes.preset, model=sizes.model)
    directory = workdir / "hf_model"
    if not directory.exists():
        save_hf(hf, directory)
    dtype = jnp.bfloat16 if device else jnp.float32
    model, _ = load_ours(directory, dtype=dtype)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    results = []
    P, N = sizes.prompt, sizes.new_tokens
    for b in sizes.gen_batches:
        ids_np = np.random.default_rng(b).integers(3, cfg.vocab_size, (b, P)).astype(np.int32)
        ids = jnp.asarray(ids_np)
        prefill, generate, state = _our_generator(model, cfg, b, P, N)
        t0 = time.perf_counter()
        prefill_c = prefill.lower(state, ids).compile()
        generate_c = generate.lower(state, ids).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(prefill_c(state, ids))
        ours_tokens = np.asarray(generate_c(state, ids))
        row: dict[str, Any] = {"batch": b, "prompt": P, "new_tokens": N, "dtype": "bfloat16" if device else "float32",
                               "ours_compile_s": compile_s}
        tt, tf = [], []
        for _ in range(sizes.gen_reps):
            tt.append(_timeit(lambda: jax.block_until_ready(prefill_c(state, ids))))
            tf.append(_timeit(lambda: jax.block_until_ready(generate_c(state, ids))))
        row["ours_ttft_s"], row["ours_total_s"] = median(tt), median(tf)
        row["ours_decode_tok_s"] = b * (N - 1) / max(row["ours_total_s"] - row["ours_ttft_s"], 1e-9)
        row["ours_e2e_tok_s"] = b * N / row["ours_total_s"]
        if not device:
            tids = torch.from_numpy(ids_np).long()
            mask = torch.ones_like(tids)
            kw = dict(attention_mask=mask, do_sample=False, use_cache=True)
            with torch.inference_mode():
                theirs_tokens = hf.generate(tids, max_new_tokens=N, min_new_tokens=N, **kw)[:, P:].numpy()
                tt, tf = [], []
                for _ in range(sizes.gen_reps):
                    tt.append(_timeit(lambda: hf.generate(tids, max_new_tokens=1, min_new_tokens=1, **kw)))
                    tf.append(_timeit(lambda: hf.generate(tids, max_new_tokens=N, min_new_tokens=N, **kw)))
            row["theirs_ttft_s"], row["theirs_total_s"] = median(tt), median(tf)
            row["theirs_decode_tok_s"] = b * (N - 1) / max(row["theirs_total_s"] - row["theirs_ttft_s"], 1e-9)
            row["theirs_e2e_tok_s"] = b * N / row["theirs_total_s"]
            row["decode_ratio"] = row["ours_decode_tok_s"] / row["theirs_decode_tok_s"]
            row["ttft_ratio_theirs_over_ours"] = row["theirs_ttft_s"] / row["ours_ttft_s"]
            row["e2e_ratio"] = row["ours_e2e_tok_s"] / row["theirs_e2e_tok_s"]
            row["greedy_token_agreement"] = float(np.mean(ours_tokens == theirs_tokens))
        row.update(_generator_api(model, ids_np, N))
        results.append(row)
        log("  " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}))
    return {"preset": sizes.model or sizes.preset, "rows": results}


# ------------------------------------------------------------------------------------------------
# Data


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_data(sizes: Sizes, train_res: dict[str, Any] | None) -> dict[str, Any]:
    from bioinstruct_jax.data.filters import RougePool

    synth = _load_script("bench_rouge_filter").synthetic
    pool_texts = synth(sizes.rouge_pool, 0)
    cands = synth(sizes.rouge_candidates, 1)
    t0 = time.perf_counter()
    pool = RougePool(pool_texts)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rejected = sum(pool.is_near_duplicate(c) for c in cands)
    query_s = time.perf_counter() - t0
    res: dict[str, Any] = {"rouge_pool": len(pool_texts), "rouge_candidates": len(cands),
                           "rouge_build_instr_per_s": len(pool_texts) / build_s,
                           "rouge_instr_per_s": len(cands) / query_s, "rouge_rejected": int(rejected)}
    res.update(bench_pipeline(sizes))
    if train_res and "pipeline_examples_per_s" in res:
        need = train_res["ours_tokens_per_s"] / train_res["seq"]
        res["train_step_examples_per_s"] = need
        res["pipeline_headroom"] = res["pipeline_examples_per_s"] / need
    return res


def bench_pipeline(sizes: Sizes) -> dict[str, Any]:
    """Seed records repeated to n examples, a SentencePiece tokenizer trained on them, batches of
    the train benchmark's shape (batch x seq) from `make_batch_iterator`."""
    from bioinstruct_jax.data.pipeline import DataConfig, make_batch_iterator
    from bioinstruct_jax.tokenizer import load_tokenizer, train_sentencepiece

    lines = (REPO / "seeds" / "bioinstruct_seeds.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines if x.strip()]
    n = 2000 if sizes.rouge_pool < 25000 else 20000
    records = (records * (n // len(records) + 1))[:n]
    with tempfile.TemporaryDirectory() as d:
        texts = [" ".join(str(v) for v in r.values() if isinstance(v, str)) for r in records[:80]]
        tok = load_tokenizer(train_sentencepiece(texts, 1000, d))
        cfg = DataConfig(max_length=sizes.seq, batch_size=8, num_epochs=1, shuffle=True)
        t0 = time.perf_counter()
        it = make_batch_iterator(cfg, tok, "train", records=records, process_index=0, process_count=1)
        rows = 0
        for batch in it:
            rows += int(np.asarray(batch["input_ids"]).shape[0])
        dt = time.perf_counter() - t0
    return {"pipeline_examples": rows, "pipeline_examples_per_s": rows / dt, "pipeline_seq": sizes.seq}


# ------------------------------------------------------------------------------------------------
# Memory (fresh processes) and planner


def _child_rss(args: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_train_rss(sizes: Sizes, workdir: pathlib.Path) -> dict[str, Any]:
    """(run in a fresh process) load the HF dir, 3 train steps, report its peak RSS (VmHWM)."""
    from bioinstruct_jax.model.llama import LlamaConfig

    cfg = LlamaConfig.from_hf(workdir / "hf_model") if sizes.model else LlamaConfig.preset(sizes.preset)
    start = _maxrss()
    model, _ = load_ours(workdir / "hf_model")
    before = _maxrss()
    ours = OursTrain(model, cfg, random_batch(cfg.vocab_size, sizes.train_batch, sizes.seq), sizes.lora_r)
    for _ in range(3):
        ours.step()
    return {"peak_rss_bytes": _maxrss(), "rss_after_load_bytes": before, "rss_after_imports_bytes": start}


def child_export_rss(workdir: pathlib.Path) -> dict[str, Any]:
    """(run in a fresh process) peak host-memory growth of a merged export of a 1.33 GB float32
    LLaMA into 5 shards: `scripts/export_memory.py`'s measurement (VmHWM reset + sampler)."""
    import export_memory

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        return export_memory.measure(2048, 5504, 4, 32000, 300.0, pathlib.Path(tmp) / "merged")


def _maxrss() -> int:
    """This process's peak RSS (VmHWM): unlike ru_maxrss, it is not inherited from the parent
    across fork + exec, so a child's figure is its own."""
    import export_memory

    return (export_memory.status_kib("VmHWM") or 0) * 1024


def bench_memory(sizes: Sizes, workdir: pathlib.Path) -> dict[str, Any]:
    directory = workdir / "hf_model"
    if not directory.exists():
        hf, _ = hf_model(sizes.preset, model=sizes.model)
        save_hf(hf, directory)
    common = ["--workdir", str(workdir), "--preset", sizes.preset, "--batch", str(sizes.train_batch),
              "--seq", str(sizes.seq), *(["--model", sizes.model] if sizes.model else [])]
    res = {"train": _child_rss(["--_child", "train-rss", *common]),
           "export": _child_rss(["--_child", "export-rss", *common])}
    res["model_f32_bytes"] = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    return res


PLAN_CASES = [
    # (name, preset, mesh, batch, accelerator)
    ("7B v3-8", "llama2-7b", "1,8,1", 8, "tpu-v3"),
    ("13B v3-8", "llama2-13b", "1,8,1", 8, "tpu-v3"),
    ("7B v4-8", "llama2-7b", "1,4,1", 16, "tpu-v4"),
    ("13B v4-8", "llama2-13b", "1,4,1", 16, "tpu-v4"),
    ("7B 1xA100-80", "llama2-7b", "1,1,1", 8, "a100-80"),
    ("13B 1xA100-80", "llama2-13b", "1,1,1", 8, "a100-80"),
    ("7B 1xH100", "llama2-7b", "1,1,1", 8, "h100"),
    ("13B 1xH100", "llama2-13b", "1,1,1", 8, "h100"),
]


def bench_plan(quick: bool) -> dict[str, Any]:
    cases = PLAN_CASES[:1] if quick else PLAN_CASES
    rows = []
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for name, preset, mesh, batch, acc in cases:
        cmd = [sys.executable, "-m", "bioinstruct_jax.plan", "--preset", preset, "--mesh", mesh, "--batch",
               str(batch), "--seq", "512", "--lora-r", "16", "--remat", "--accelerator", acc, "--json"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        row: dict[str, Any] = {"case": name, "command": " ".join(["python"] + cmd[1:]),
                               "planner_s": time.perf_counter() - t0}
        if out.returncode:
            row["error"] = out.stderr[-1500:]
        else:
            text = out.stdout
            row["result"] = json.loads(text[text.index("{"): text.rindex("}") + 1])
        rows.append(row)
        log(f"  {name}: {json.dumps(row.get('result', row.get('error')))[:400]}")
    return {"rows": rows}


# ------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
            "backend": jax.default_backend(), "jax_devices": len(jax.devices()),
            "device_kind": jax.devices()[0].device_kind, "torch_threads": torch.get_num_threads(),
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP", "MKL", "XLA_FLAGS"))},
            "load_avg_start": os.getloadavg()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but plan)")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--device", action="store_true", help="run train/generate on JAX's accelerator (bf16)")
    ap.add_argument("--json", dest="json_out", help="write all figures to this JSON file")
    ap.add_argument("--preset", help="model preset (default bench-150m; --quick: small)")
    ap.add_argument("--model", help="a pretrained GGUF file or HF LLaMA folder instead of the random preset "
                    "(e.g. the installed SmolLM2-135M-Instruct); f32, the same weights on both sides")
    ap.add_argument("--batch", type=int, help="train batch (rows)")
    ap.add_argument("--seq", type=int, help="train sequence length")
    ap.add_argument("--steps", type=int, help="timed train steps per side")
    ap.add_argument("--workdir", help="where the HF checkpoint is written (default: a temp dir)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    over = {k: v for k, v in (("preset", args.preset), ("train_batch", args.batch), ("seq", args.seq),
                              ("train_steps", args.steps), ("model", args.model)) if v is not None}
    sizes = dataclasses.replace(sizes, **over)
    if args._child:
        workdir = pathlib.Path(args.workdir)
        res = child_train_rss(sizes, workdir) if args._child == "train-rss" else child_export_rss(workdir)
        print(json.dumps(res))
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"--only: unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    if args.device and jax.default_backend() == "cpu":
        ap.error("--device: JAX sees no accelerator (default backend is cpu)")
    out: dict[str, Any] = {"machine": machine(), "sizes": dataclasses.asdict(sizes), "quick": args.quick,
                           "device_mode": args.device, "command": " ".join(sys.argv)}
    log(f"machine: {json.dumps(out['machine'])}")
    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bioinstruct_bench_")
    workdir = pathlib.Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    peak_flops = None
    if args.device:
        kind = jax.devices()[0].device_kind
        peak_flops = next((v for k, v in CHIP_PEAK_BF16.items() if k.lower() in kind.lower()), None)
        out["chip_peak_bf16_flops"] = peak_flops
    if "peak" in only or ("train" in only and peak_flops is None):
        log("== peak matmul")
        out["peak"] = matmul_peak(sizes.matmul_n)
        log("  " + json.dumps({k: round(v, 1) for k, v in out["peak"].items()}))
        if peak_flops is None:
            # Both libraries time the same hardware; the larger best-of-N is the least disturbed by
            # other processes on a shared machine (a conservative, i.e. higher, peak).
            pk = out["peak"]
            peak_flops = 1e9 * (max(pk["jax_f32_gflops"], pk["torch_f32_gflops"]) if not args.device
                                else pk["jax_bf16_gflops"])
    if "train" in only:
        log(f"== train step ({sizes.preset}, batch {sizes.train_batch} x seq {sizes.seq})")
        out["train"] = bench_train(sizes, peak_flops, workdir, args.device)
        if not args.quick and not args.device:
            out["train"]["tiny_compile_s"] = tiny_compile_seconds()
        log("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out["train"].items()
                               if not k.endswith("steps_s")}))
    if "generate" in only:
        log(f"== generate ({sizes.preset}, prompt {sizes.prompt}, {sizes.new_tokens} new)")
        out["generate"] = bench_generate(sizes, workdir, args.device)
    if "data" in only:
        log("== data")
        out["data"] = bench_data(sizes, out.get("train"))
        log("  " + json.dumps(out["data"]))
    if "memory" in only:
        log("== memory")
        out["memory"] = bench_memory(sizes, workdir)
        log("  " + json.dumps(out["memory"]))
    if "plan" in only:
        log("== plan")
        out["plan"] = bench_plan(args.quick)
    out["total_s"] = time.perf_counter() - t_start
    out["machine"]["load_avg_end"] = os.getloadavg()
    log(f"total {out['total_s']:.1f} s")
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(out, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
