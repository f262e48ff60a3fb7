"""Performance benchmarks: LoRA train step, generation, data, memory and planner figures.

    .venv/bin/python scripts/benchmark.py --only peak,bandwidth,train,generate --markdown headline.md
                                                  # BENCHMARKS.md's headline tables (~13 min idle)
    .venv/bin/python scripts/benchmark.py --json bench.json            # every default section (~15 min)
    .venv/bin/python scripts/benchmark.py --quick --only train,data    # smoke run (< 1 min)
    .venv/bin/python scripts/benchmark.py --device --only train,generate   # on a GPU / TPU
    .venv/bin/python scripts/benchmark.py --model DIR|FILE.gguf ...    # an HF LLaMA folder or GGUF file, both sides

Sections (`--only`, comma-separated; default all but plan): peak, bandwidth, train, generate, data,
memory, plan.

Honesty rules: every timed figure is the median of >= 3 repeats with its min and max; around each
section the 1/5/15-minute load average (before, after) and the cores other processes used
(`LoadProbe`) are recorded, and a section on a machine that was not idle (other processes using
> IDLE_FOREIGN_CORES cores during it) prints a warning and is marked LOADED in the tables that
`headline_markdown` prints at the end (`--markdown FILE` writes them). Every run names its
machine (`machine()`: CPU model and family/model/stepping, cores, L3, the avx512f / avx512_bf16 /
amx_bf16 flags, a numpy-copy bandwidth probe); the label heads the tables and sits in every train
and generate row of the JSON, since a ratio means something only with the machine it came from.

- peak: a large f32 and bf16 matmul, timed with jax and torch in this run (best of several);
  every MFU below is against the measured f32 figure on the CPU (the larger of jax's and torch's
  best-of-N, as both time the same cores and the larger is the one least disturbed by other
  load); with `--device`, against the chip's datasheet bf16 peak.
- train: our jitted LoRA train step (`train.step.build_train_step`) vs transformers + peft + torch
  AdamW on the same model (an HF `LlamaForCausalLM` with random weights, saved with
  `save_pretrained` and loaded by us with `checkpoint.hf.load_pretrained`), same batch, LoRA r=16 /
  alpha 32 on q,k,v,o, dropout 0 on both sides (dropout only adds RNG noise), grad-norm clip 1.0.
  Steps of the two sides are interleaved (ours, theirs, ours, ...) so that load from other
  processes on the machine hits both alike; figures are medians after warm-up.
- bandwidth: main-memory GB/s (a large numpy copy, read + write; jax and torch reductions, read
  only); the largest is the limit decode is measured against.
- generate: greedy, prompt P, N new tokens (no EOS stop), batch 1/8/32, f32 and bf16 weights, ours
  (`infer.engine.Generator`: jitted prefill + `lax.while_loop` decode with a KV cache) vs
  `transformers.generate` (KV cache) in the same dtype on the same weights. TTFT = prefill + first
  token; decode tok/s = batch * (N - 1) / (total - TTFT); achieved GB/s = (weight + filled KV-cache
  bytes per step) / step time, and the roofline fraction against the measured bandwidth and peak.
- data: ROUGE-L pool filter (instructions/s against a pool of 25K synthetic instructions) and the
  input pipeline (examples/s tokenised and batched) next to what the train step consumes.
- memory: peak host RSS (VmHWM) of a fresh process running the train step, and the peak growth of a merged export.
- plan: `bioinstruct_jax.train.plan` for LLaMA-2 7B/13B on v3-8, v4-8, one A100-80 and one H100.

FLOP convention for LoRA training: training's own (`train.metrics.flops_per_token`, where it is
written out): forward 2*N + backward activation gradients 2*N over the frozen matmul weights N
(every projection and the LM head, not the embedding lookup), 6 per LoRA weight, attention over the
full T x T (PaLM's convention). N and the LoRA weights are counted here from the config's shapes
(`matmul_params`). The "6*N*T" figure (the full-fine-tuning convention) is printed for reference.

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
import copy
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

import bioinstruct_jax  # noqa: E402,F401 - before jax: keeps libtpu away without a TPU (parallel/platforms.py)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import export_memory  # noqa: E402 - scripts/export_memory.py, beside this file
from bioinstruct_jax.checkpoint.hf import load_pretrained  # noqa: E402
from bioinstruct_jax.data.pipeline import DataConfig, make_batch_iterator  # noqa: E402
from bioinstruct_jax.data.tokenizer import load_tokenizer_files, train_sentencepiece  # noqa: E402
from bioinstruct_jax.infer.engine import Generator  # noqa: E402
from bioinstruct_jax.model.config import LlamaConfig  # noqa: E402
from bioinstruct_jax.model.decoder import Llama  # noqa: E402
from bioinstruct_jax.model.lora import LoraConfig, apply_lora  # noqa: E402
from bioinstruct_jax.parallel import accelerators  # noqa: E402
from bioinstruct_jax.train import metrics as train_metrics  # noqa: E402
from bioinstruct_jax.train import step as ts  # noqa: E402
from bioinstruct_jax.config.sections import OptimConfig  # noqa: E402

# torch, transformers and peft (the side we compare with) are imported in the functions that use
# them: each costs seconds to import, and a `--device` run or the `plan` section never needs them.

SECTIONS = ("peak", "bandwidth", "train", "generate", "data", "memory", "plan")
# The planner compiles 7B/13B steps for ~1-2 min each on 2 cores, so it runs only when asked.
DEFAULT_SECTIONS = ("peak", "bandwidth", "train", "generate", "data", "memory")


@dataclasses.dataclass(frozen=True)
class Sizes:
    preset: str = "bench-150m"
    model: str | None = None  # an HF LLaMA directory used instead of the random-weight preset
    train_batch: int = 2
    seq: int = 512
    train_steps: int = 5
    warmup: int = 2
    gen_batches: tuple[int, ...] = (1, 8, 32)
    gen_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    prompt: int = 128
    new_tokens: int = 128
    reps: int = 3
    rouge_pool: int = 25000
    rouge_candidates: int = 500
    matmul_n: int = 4096
    bandwidth_mib: int = 512
    lora_r: int = 16

    @property
    def label(self) -> str:
        return self.model or self.preset


QUICK = Sizes(preset="small", train_batch=2, seq=128, train_steps=3, warmup=1, gen_batches=(1, 8),
              prompt=32, new_tokens=16, reps=3, rouge_pool=2000, rouge_candidates=100, matmul_n=1024,
              bandwidth_mib=64)

# A section counts as measured on an idle machine when, during it, other processes used at most
# IDLE_FOREIGN_CORES cores on average. The load average is recorded but not judged: it counts this
# benchmark's own earlier sections (its 1-minute figure stays above 1 for minutes after one ends).
IDLE_FOREIGN_CORES = 0.25


def log(msg: str) -> None:
    print(msg, flush=True)


def median(xs):
    return float(statistics.median(xs))


def stats(xs) -> dict[str, float]:
    """Median, min and max of repeated measurements (and how many)."""
    xs = [float(x) for x in xs]
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------
# Machine load


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes spent busy since boot (/proc/stat: total minus idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal, less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadProbe:
    """The load around one section: 1/5/15-minute load averages before and after, and the cores
    that *other* processes kept busy during it (all busy CPU time minus this process's and its
    children's, per second of wall time). The load average counts this benchmark too (it keeps
    both cores busy), so the foreign-core figure is the one that says whether others interfered."""

    def __init__(self, name: str):
        self.name = name
        self.load_before = os.getloadavg()
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds()

    def finish(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        foreign = max(0.0, (_busy_cpu_seconds() - self._busy0) - (_own_cpu_seconds() - self._own0)) / max(wall, 1e-9)
        res = {"load_before": [round(x, 2) for x in self.load_before],
               "load_after": [round(x, 2) for x in os.getloadavg()],
               "foreign_cores": round(foreign, 3), "wall_s": round(wall, 1)}
        res["idle"] = foreign <= IDLE_FOREIGN_CORES
        if not res["idle"]:
            log(f"WARNING: the machine was not idle during '{self.name}' (load average before "
                f"{res['load_before'][0]}, other processes used {foreign:.2f} cores): its figures are "
                f"'loaded' figures, not headline ones")
        return res


# ------------------------------------------------------------------------------------------------
# Peak matmul rates


def matmul_peak(n: int, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of an n x n x n matmul: jax f32/bf16, torch f32/bf16 (best of reps)."""
    import torch

    out = {}
    flops = 2.0 * n**3
    for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        out[f"jax_{name}_gflops"] = train_metrics.matmul_flops(n, reps, dt, jax.devices()[0]) / 1e9
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        a @ b
        t1 = _timeit(lambda: a @ b)
        r = reps if t1 < 5 else 1  # a slow bf16 path would take minutes
        best = min([t1] + [_timeit(lambda: a @ b) for _ in range(r - 1)])
        out[f"torch_{name}_gflops"] = flops / best / 1e9
    return out


def memory_bandwidth(mib: int, reps: int = 5) -> dict[str, float]:
    """Main-memory bandwidth (GB/s, best of `reps`): a numpy copy of a `mib` MiB array (bytes read
    + bytes written), and reads alone (a jitted jnp.sum and a torch sum over the same bytes). Far
    larger than the caches, so these are DRAM figures; `bandwidth_gbs` is the largest, the limit
    decode is measured against."""
    import torch

    n = mib * (1 << 20) // 4
    a = np.ones(n, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)  # page both in
    copy_s = min(_timeit(lambda: np.copyto(b, a)) for _ in range(reps))
    x = jnp.asarray(a)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    jax_s = min(_timeit(lambda: f(x).block_until_ready()) for _ in range(reps))
    t = torch.from_numpy(a)
    t.sum()
    torch_s = min(_timeit(lambda: t.sum()) for _ in range(reps))
    out = {"array_mib": mib, "numpy_copy_gbs": 2 * a.nbytes / copy_s / 1e9, "jax_read_gbs": a.nbytes / jax_s / 1e9,
           "torch_read_gbs": a.nbytes / torch_s / 1e9}
    out["bandwidth_gbs"] = max(out["numpy_copy_gbs"], out["jax_read_gbs"], out["torch_read_gbs"])
    return out


def _timeit(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Model construction (same weights on both sides)


def hf_model(preset: str, seed: int = 0):
    """A random-weight f32 transformers LlamaForCausalLM of our preset's shape."""
    import torch
    import transformers

    cfg = LlamaConfig.preset(preset)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf("float32").items()
                                         if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hf_cfg).float().eval()
    return model, cfg


def gguf_to_hf(path: pathlib.Path):
    """A GGUF file dequantized by transformers' own GGUF loader, as a plain f32 LlamaForCausalLM
    (so that both sides load the same weights from the folder it is saved to)."""
    import torch
    import transformers

    loaded = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    hf_cfg = loaded.config
    if hasattr(hf_cfg, "quantization_config"):  # dequantized: a plain model that save_pretrained writes
        del hf_cfg.quantization_config
    hf = transformers.LlamaForCausalLM(hf_cfg)
    hf.load_state_dict(loaded.state_dict(), strict=False)
    hf.tie_weights()
    return hf.float().eval()


def model_directory(sizes: Sizes, workdir: pathlib.Path) -> pathlib.Path:
    """The f32 HF folder that both sides (and the memory section's fresh processes) load: `--model
    DIR` itself; a `--model FILE.gguf` converted once; else the random-weight preset saved once.
    A converted or saved folder lives under `workdir`, named after its source, so a reused
    `--workdir` never serves one model's weights for another."""
    if sizes.model and pathlib.Path(sizes.model).suffix != ".gguf":
        return pathlib.Path(sizes.model)
    source = pathlib.Path(sizes.model).stem if sizes.model else sizes.preset
    directory = workdir / f"hf_model-{source}"
    if not (directory / "config.json").is_file():
        hf = gguf_to_hf(pathlib.Path(sizes.model)) if sizes.model else hf_model(sizes.preset)[0]
        save_hf(hf, directory)
    return directory


def prepare_model(sizes: Sizes, workdir: pathlib.Path):
    """(f32 transformers model, our LlamaConfig, HF directory both sides load), see model_directory."""
    import torch
    import transformers

    directory = model_directory(sizes, workdir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return hf, LlamaConfig.from_hf(directory), directory


def save_hf(model, directory: pathlib.Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def load_ours(directory: pathlib.Path, dtype=jnp.float32):
    return load_pretrained(directory, dtype=dtype)


def matmul_params(cfg, lora_r: int, lora_targets: int = 4) -> tuple[int, int]:
    """(matmul weights: every projection and the LM head, LoRA weights on the first `lora_targets`
    of q, k, v, o) of a LlamaConfig, counted from its shapes."""
    d, f, v, hd = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.resolved_head_dim
    L, nh, nkv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    attn_params = d * hd * (2 * nh + 2 * nkv)
    n_mm = L * (attn_params + 3 * d * f) + d * v  # projections + LM head
    q, kv, o = (d, nh * hd), (d, nkv * hd), (nh * hd, d)
    lora_in_out = sum(i + o_ for i, o_ in (q, kv, kv, o)[:lora_targets])
    return n_mm, L * lora_r * lora_in_out


def train_flops_per_token(cfg, seq: int, lora_r: int, lora_targets: int = 4) -> dict[str, float]:
    """Training FLOPs per token by `train.metrics.flops_per_token` (the convention training's MFU
    uses): with LoRA on a frozen base, and with every matmul weight trained (the 6N figure)."""
    n_mm, n_lora = matmul_params(cfg, lora_r, lora_targets)
    return {"n_matmul_params": n_mm,
            "lora_flops_per_token": train_metrics.flops_per_token(cfg, n_mm, n_lora, seq),
            "six_n_per_token": train_metrics.flops_per_token(cfg, 0, n_mm, seq)}


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

    hf, cfg, directory = prepare_model(sizes, workdir)
    dtype = jnp.bfloat16 if device else jnp.float32
    model, _ = load_ours(directory, dtype=dtype)
    batch = random_batch(cfg.vocab_size, sizes.train_batch, sizes.seq)
    ours = OursTrain(model, cfg, batch, sizes.lora_r, dtype)
    theirs = None if device else TheirsTrain(hf, batch, sizes.lora_r)
    for i in range(sizes.warmup):
        ours.step()
        if theirs:
            theirs.step()
        if i == 0:  # the first step's loss is the base model's (LoRA B starts at zero): equal in both
            first_losses = (ours.loss, theirs.loss if theirs else None)
    t_ours, t_theirs = [], []
    for _ in range(sizes.train_steps):
        t_ours.append(ours.step())
        if theirs:
            t_theirs.append(theirs.step())
    tokens = sizes.train_batch * sizes.seq
    fl = train_flops_per_token(cfg, sizes.seq, sizes.lora_r)
    res: dict[str, Any] = {
        "preset": sizes.label, "params": cfg.num_params(), "n_matmul_params": fl["n_matmul_params"],
        "batch": sizes.train_batch, "seq": sizes.seq, "lora_r": sizes.lora_r, "dtype": "bfloat16" if device else "float32",
        "compile_s": ours.compile_s, "ours_step_s": median(t_ours), "ours_steps_s": t_ours,
        "ours_tokens_per_s_stats": stats([tokens / t for t in t_ours]),
        "ours_tokens_per_s": tokens / median(t_ours), "ours_loss": ours.loss, "ours_first_loss": first_losses[0],
        "flops_per_token": fl["lora_flops_per_token"], "six_n_flops_per_token": fl["six_n_per_token"],
        "peak_flops": peak_flops, "device": str(jax.devices()[0].device_kind),
    }
    res["ours_mfu"] = res["ours_tokens_per_s"] * fl["lora_flops_per_token"] / peak_flops
    res["ours_mfu_6nt"] = res["ours_tokens_per_s"] * fl["six_n_per_token"] / peak_flops
    if theirs:
        res.update({"theirs_step_s": median(t_theirs), "theirs_steps_s": t_theirs,
                    "theirs_tokens_per_s_stats": stats([tokens / t for t in t_theirs]),
                    "ratio_stats": stats([a / b for a, b in zip(t_theirs, t_ours)]),
                    "theirs_tokens_per_s": tokens / median(t_theirs), "theirs_loss": theirs.loss,
                    "theirs_first_loss": first_losses[1],
                    "torch_threads": torch.get_num_threads()})
        res["theirs_mfu"] = res["theirs_tokens_per_s"] * fl["lora_flops_per_token"] / peak_flops
        res["ratio_ours_over_theirs"] = res["ours_tokens_per_s"] / res["theirs_tokens_per_s"]
    return res


# ------------------------------------------------------------------------------------------------
# Generation


def decode_traffic(cfg, batch: int, prompt: int, new: int, bytes_per_param: int) -> dict[str, float]:
    """Bytes and FLOPs one decode step needs, averaged over the `new - 1` decode steps.

    Weights: every matmul kernel (projections + LM head) and the norms are read once per step; the
    embedding table only for `batch` rows. KV cache: the filled part (prompt + tokens so far) of
    every layer's keys and values, averaged over the steps (prompt + new/2 slots). Cache dtype =
    weight dtype (as `Generator` allocates it).
    """
    d, hd, kv, L = cfg.hidden_size, cfg.resolved_head_dim, cfg.num_key_value_heads, cfg.num_hidden_layers
    n_mm, _ = matmul_params(cfg, 1)
    norms = (2 * L + 1) * d
    weight_bytes = (n_mm + norms) * bytes_per_param + batch * d * bytes_per_param
    avg_slots = prompt + new / 2
    kv_bytes = batch * L * 2 * kv * hd * avg_slots * bytes_per_param
    flops = batch * (2 * n_mm + 4 * L * cfg.num_attention_heads * hd * avg_slots)
    return {"weight_bytes": weight_bytes, "kv_bytes_avg": kv_bytes, "bytes_per_step": weight_bytes + kv_bytes,
            "flops_per_step": flops}


def roofline(row: dict[str, Any], traffic: dict[str, float], side: str, bandwidth: float | None,
             peak_flops: float | None) -> None:
    """Adds `{side}_achieved_gbs` (weight + KV bytes per step / step time) and, with a measured
    bandwidth, the fraction of the roofline: max(bytes / bandwidth, flops / peak) / step time."""
    step = row.get(f"{side}_decode_step_s")
    if not step:
        return
    row[f"{side}_achieved_gbs"] = traffic["bytes_per_step"] / step / 1e9
    if bandwidth:
        bound = traffic["bytes_per_step"] / bandwidth
        if peak_flops:
            bound = max(bound, traffic["flops_per_step"] / peak_flops)
        row[f"{side}_roofline_fraction"] = bound / step
        row["roofline_tok_s"] = row["batch"] / bound


class OursGenerate:
    """`bioinstruct_jax.infer.engine.Generator` (the engine `generate` / eval use), greedy, no EOS so
    every row makes `new` tokens. TTFT runs the same compiled program with max_new_tokens=1 (the
    new-token bucket is pinned to `new`, so both calls share shapes and program)."""

    def __init__(self, model, ids_np: np.ndarray, new: int):
        self.gen = Generator(model, max_batch_size=max(32, len(ids_np)), eos_ids=(), min_new_bucket=new)
        self.prompts = [list(map(int, r)) for r in ids_np]
        self.new = new
        t0 = time.perf_counter()
        self.gen.generate(self.prompts, max_new_tokens=1)
        self.tokens = np.asarray(self.gen.generate(self.prompts, max_new_tokens=new).tokens)
        self.first_call_s = time.perf_counter() - t0
        assert self.gen.total_compilations == 1, self.gen.compilations

    def ttft(self) -> float:
        return _timeit(lambda: self.gen.generate(self.prompts, max_new_tokens=1))

    def total(self) -> float:
        return _timeit(lambda: self.gen.generate(self.prompts, max_new_tokens=self.new))


class TheirsGenerate:
    """`transformers.generate` with its KV cache (greedy, min_new_tokens = max_new_tokens)."""

    def __init__(self, hf, ids_np: np.ndarray, new: int):
        import torch

        self.torch, self.hf, self.new = torch, hf, new
        self.ids = torch.from_numpy(ids_np).long()
        self.kw = dict(attention_mask=torch.ones_like(self.ids), do_sample=False, use_cache=True)
        with torch.inference_mode():
            self.tokens = hf.generate(self.ids, max_new_tokens=new, min_new_tokens=new, **self.kw)[:, ids_np.shape[1]:].numpy()

    def _run(self, n: int) -> float:
        with self.torch.inference_mode():
            return _timeit(lambda: self.hf.generate(self.ids, max_new_tokens=n, min_new_tokens=n, **self.kw))

    def ttft(self) -> float:
        return self._run(1)

    def total(self) -> float:
        return self._run(self.new)


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Share of equal tokens, and the mean length of the common prefix per row."""
    eq = a == b
    prefix = np.where(eq.all(axis=1), eq.shape[1], np.argmin(eq, axis=1))
    return {"equal": float(eq.mean()), "mean_common_prefix": float(prefix.mean())}


def bench_generate(sizes: Sizes, workdir: pathlib.Path, device: bool, bandwidth: float | None = None,
                   peak: dict[str, float] | None = None) -> dict[str, Any]:
    """Per batch size and dtype (f32 vs transformers f32; bf16 weights vs transformers bf16, its
    fastest CPU setting here): TTFT, decode tok/s = batch * (N - 1) / (total - TTFT), each side
    timed `sizes.reps` times, ours and theirs alternating; bf16 tokens are compared with our f32
    greedy tokens (same prompts), f32 tokens with transformers' f32 tokens."""
    import torch

    hf32, cfg, directory = prepare_model(sizes, workdir)
    dtypes = ["bfloat16"] if device else list(sizes.gen_dtypes)
    results = []
    P, N = sizes.prompt, sizes.new_tokens
    f32_tokens: dict[int, np.ndarray] = {}
    for dtype_name in dtypes:
        jdt = jnp.float32 if dtype_name == "float32" else jnp.bfloat16
        model, _ = load_ours(directory, dtype=jdt)
        hf = None
        if not device:
            hf = hf32 if dtype_name == "float32" else copy.deepcopy(hf32).to(torch.bfloat16)
            hf.generation_config.eos_token_id = None
            hf.generation_config.pad_token_id = 0
        bytes_pp = 4 if dtype_name == "float32" else 2
        pk = None
        if peak:
            pk = 1e9 * max(peak.get("jax_f32_gflops", 0), peak.get("jax_bf16_gflops", 0))
        for b in sizes.gen_batches:
            ids_np = np.random.default_rng(b).integers(3, cfg.vocab_size, (b, P)).astype(np.int32)
            ours = OursGenerate(model, ids_np, N)
            theirs = TheirsGenerate(hf, ids_np, N) if hf is not None else None
            row: dict[str, Any] = {"batch": b, "prompt": P, "new_tokens": N, "dtype": dtype_name,
                                   "ours_first_call_s": ours.first_call_s}
            times: dict[str, dict[str, list[float]]] = {}
            sides = [("ours", ours)] + ([("theirs", theirs)] if theirs else [])
            for _ in range(sizes.reps):
                for name, side in sides:
                    t = times.setdefault(name, {"ttft": [], "total": []})
                    t["ttft"].append(side.ttft())
                    t["total"].append(side.total())
            for name, _ in sides:
                tt, tf = times[name]["ttft"], times[name]["total"]
                # A repeat whose total is not longer than its TTFT (timer noise on tiny models) has
                # no decode figure.
                decode = [b * (N - 1) / (f - t) for t, f in zip(tt, tf) if f > t]
                row[f"{name}_ttft_s"] = stats(tt)
                row[f"{name}_total_s"] = stats(tf)
                row[f"{name}_decode_tok_s"] = stats(decode) if decode else None
                if decode:
                    row[f"{name}_decode_step_s"] = b / row[f"{name}_decode_tok_s"]["median"]
                row[f"{name}_e2e_tok_s"] = b * N / row[f"{name}_total_s"]["median"]
            if theirs and row["ours_decode_tok_s"] and row["theirs_decode_tok_s"]:
                row["decode_ratio"] = row["ours_decode_tok_s"]["median"] / row["theirs_decode_tok_s"]["median"]
            if theirs:
                row["e2e_ratio"] = row["ours_e2e_tok_s"] / row["theirs_e2e_tok_s"]
                row["agreement_with_transformers_same_dtype"] = _agreement(ours.tokens, theirs.tokens)
            if dtype_name == "float32":
                f32_tokens[b] = ours.tokens
            elif b in f32_tokens:
                row["agreement_with_our_f32"] = _agreement(ours.tokens, f32_tokens[b])
            traffic = decode_traffic(cfg, b, P, N, bytes_pp)
            row["traffic"] = traffic
            for name, _ in sides:
                roofline(row, traffic, name, bandwidth, pk)
            results.append(row)
            log("  " + json.dumps(_rounded(row)))
            del ours, theirs
    return {"preset": sizes.label, "rows": results, "bandwidth_bytes_per_s": bandwidth}


# ------------------------------------------------------------------------------------------------
# Data


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_data(sizes: Sizes, train_res: dict[str, Any] | None) -> dict[str, Any]:
    rouge = _load_script("bench_rouge_filter")
    pool_texts = rouge.synthetic(sizes.rouge_pool, 0)
    cands = rouge.synthetic(sizes.rouge_candidates, 1)
    _, build_s, query_s, rejected = rouge.time_pool(pool_texts, cands)
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
    lines = (REPO / "seeds" / "bioinstruct_seeds.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines if x.strip()]
    n = 2000 if sizes.rouge_pool < 25000 else 20000
    records = (records * (n // len(records) + 1))[:n]
    with tempfile.TemporaryDirectory() as d:
        texts = [" ".join(str(v) for v in r.values() if isinstance(v, str)) for r in records[:80]]
        t_sp = time.perf_counter()
        tok = load_tokenizer_files(train_sentencepiece(texts, 1000, d))
        sp_train_s = time.perf_counter() - t_sp
        cfg = DataConfig(max_length=sizes.seq, batch_size=8, num_epochs=1, shuffle=True)
        t0 = time.perf_counter()
        it = make_batch_iterator(cfg, tok, "train", records=records, process_index=0, process_count=1)
        rows = 0
        for batch in it:
            rows += int(np.asarray(batch["input_ids"]).shape[0])
        dt = time.perf_counter() - t0
    return {"pipeline_examples": rows, "pipeline_examples_per_s": rows / dt, "pipeline_seq": sizes.seq,
            "sentencepiece_train_s": sp_train_s}  # 80 seed texts, vocab 1000


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
    directory = model_directory(sizes, workdir)  # made by the parent: this process only reads it
    cfg = LlamaConfig.from_hf(directory)
    start = _maxrss()
    model, _ = load_ours(directory)
    before = _maxrss()
    ours = OursTrain(model, cfg, random_batch(cfg.vocab_size, sizes.train_batch, sizes.seq), sizes.lora_r)
    for _ in range(3):
        ours.step()
    return {"peak_rss_bytes": _maxrss(), "rss_after_load_bytes": before, "rss_after_imports_bytes": start,
            "params": cfg.num_params()}


def child_export_rss(workdir: pathlib.Path) -> dict[str, Any]:
    """(run in a fresh process) peak host-memory growth of a merged export of a 1.33 GB float32
    LLaMA into 5 shards: `scripts/export_memory.py`'s measurement (VmHWM reset + sampler)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        return export_memory.measure(2048, 5504, 4, 32000, 300.0, pathlib.Path(tmp) / "merged")


def _maxrss() -> int:
    """This process's peak RSS (VmHWM): unlike ru_maxrss, it is not inherited from the parent
    across fork + exec, so a child's figure is its own."""
    return (export_memory.status_kib("VmHWM") or 0) * 1024


def bench_memory(sizes: Sizes, workdir: pathlib.Path) -> dict[str, Any]:
    directory = model_directory(sizes, workdir)
    common = ["--workdir", str(workdir), "--preset", sizes.preset, *(["--model", sizes.model] if sizes.model else []),
              "--batch", str(sizes.train_batch), "--seq", str(sizes.seq)]
    res = {"train": _child_rss(["--_child", "train-rss", *common]),
           "export": _child_rss(["--_child", "export-rss", *common])}
    res["model"] = sizes.label
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


# The ISA flags that decide which matmul kernels a library can use on an x86 CPU (Linux
# /proc/cpuinfo names): AVX-512 f32, AVX512-BF16 dot products, AMX bf16 tiles.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_description() -> dict[str, Any]:
    """The CPU as /proc/cpuinfo and sysfs give it: model name, family/model/stepping (the model
    name alone is "AMD EPYC" on some VMs; family 25 model 1 is Zen 3, 25/17 Zen 4), logical cores,
    L3 size and the ISA flags of `ISA_FLAGS` (True / False)."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    flags = set(info.get("flags", "").split())
    l3 = None
    with contextlib.suppress(OSError):
        l3 = pathlib.Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    return {"cpu": info.get("model name", platform.processor() or platform.machine()),
            "cpu_family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
            "cores": os.cpu_count(), "l3": l3, "isa": {f: f in flags for f in ISA_FLAGS}}


def quick_bandwidth_gbs(mib: int = 256, reps: int = 3) -> float:
    """Main-memory bandwidth of a numpy copy (read + write, GB/s, best of `reps`): a cheap probe so
    that every run names its machine's memory speed, also without the bandwidth section."""
    a = np.ones(mib * (1 << 20) // 4, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    return 2 * a.nbytes / min(_timeit(lambda: np.copyto(b, a)) for _ in range(reps)) / 1e9


def machine_label(m: dict[str, Any]) -> str:
    """One line naming the machine a figure was measured on, e.g. `AMD EPYC (25/1/1), 2 cores, L3
    32768K, avx512f no, avx512_bf16 no, amx_bf16 no, copy 30.1 GB/s`."""
    isa = ", ".join(f"{f} {'yes' if m['isa'][f] else 'no'}" for f in ("avx512f", "avx512_bf16", "amx_bf16"))
    l3 = f", L3 {m['l3']}" if m.get("l3") else ""
    return (f"{m['cpu']} ({m['cpu_family_model_stepping']}), {m['cores']} cores{l3}, {isa}, "
            f"copy {m['copy_bandwidth_gbs']:.1f} GB/s")


def machine() -> dict[str, Any]:
    import torch

    out = cpu_description()
    out["copy_bandwidth_gbs"] = quick_bandwidth_gbs()
    out.update({"jax": jax.__version__, "torch": torch.__version__,
                "backend": jax.default_backend(), "jax_devices": len(jax.devices()),
                "device_kind": jax.devices()[0].device_kind, "torch_threads": torch.get_num_threads(),
                "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP", "MKL", "XLA_FLAGS"))},
                "load_avg_start": os.getloadavg()})
    out["label"] = machine_label(out)
    return out


def _fmt(st: dict[str, float] | None, digits: int = 1) -> str:
    if not st:
        return "-"
    return f"{st['median']:.{digits}f} [{st['min']:.{digits}f}–{st['max']:.{digits}f}]"


def headline_markdown(out: dict[str, Any]) -> str:
    """The tables BENCHMARKS.md shows, from one run: medians [min–max] of `reps` repeats, with the
    load of each section; rows of sections that were not idle go to a separate 'loaded' table."""
    lines: list[str] = []
    loads = out.get("load", {})
    if "machine" in out:
        m = out["machine"]
        lines += [f"Machine: **{m['label']}**; jax {m['jax']} ({m['backend']}), torch {m['torch']} "
                  f"({m['torch_threads']} threads)", ""]

    def load_cell(section: str) -> str:
        ld = loads.get(section)
        if not ld:
            return "-"
        return f"{ld['load_before'][0]:.2f}→{ld['load_after'][0]:.2f}, others {ld['foreign_cores']:.2f} cores"

    def split(section: str) -> str:
        return "idle" if loads.get(section, {}).get("idle") else "LOADED"

    if "bandwidth" in out:
        bw = out["bandwidth"]
        lines += [f"Memory bandwidth ({split('bandwidth')}, load {load_cell('bandwidth')}): numpy copy "
                  f"{bw['numpy_copy_gbs']:.1f} GB/s (read + write), jax read {bw['jax_read_gbs']:.1f}, torch read "
                  f"{bw['torch_read_gbs']:.1f} GB/s; limit used = **{bw['bandwidth_gbs']:.1f} GB/s**", ""]
    if "peak" in out:
        pk = out["peak"]
        lines += [f"Matmul peak ({split('peak')}, load {load_cell('peak')}): jax f32 {pk['jax_f32_gflops']:.1f} / bf16 "
                  f"{pk['jax_bf16_gflops']:.1f}, torch f32 {pk['torch_f32_gflops']:.1f} / bf16 "
                  f"{pk['torch_bf16_gflops']:.1f} GFLOP/s", ""]
    if "train" in out and "ratio_stats" in out["train"]:
        tr = out["train"]
        lines += [f"Train step ({tr['preset']}, {tr['batch']}×{tr['seq']}, {tr['dtype']}, LoRA r={tr['lora_r']}; "
                  f"{split('train')}, load {load_cell('train')}):", "",
                  "| ours tok/s | transformers+peft tok/s | ratio | ours MFU |", "|---|---|---|---|",
                  f"| {_fmt(tr['ours_tokens_per_s_stats'])} | {_fmt(tr['theirs_tokens_per_s_stats'])} | "
                  f"**{_fmt(tr['ratio_stats'], 2)}** | {100 * tr['ours_mfu']:.1f}% |", ""]
    if "generate" in out:
        g = out["generate"]
        lines += [f"Decode ({g['preset']}, prompt {g['rows'][0]['prompt']}, {g['rows'][0]['new_tokens']} new, greedy; "
                  f"{split('generate')}, load {load_cell('generate')}):", "",
                  "| dtype | batch | ours decode tok/s | transformers decode tok/s | **ratio** | ours GB/s (% of limit) | "
                  "roofline % | ours TTFT s | theirs TTFT s | tokens equal |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        bwl = g.get("bandwidth_bytes_per_s")
        for r in g["rows"]:
            gbs = r.get("ours_achieved_gbs")
            gbs_cell = "-" if gbs is None else (f"{gbs:.1f}" + (f" ({100 * gbs * 1e9 / bwl:.0f}%)" if bwl else ""))
            roof = r.get("ours_roofline_fraction")
            agree = r.get("agreement_with_transformers_same_dtype") or {}
            eq = f"{100 * agree['equal']:.0f}% vs transformers" if agree else ""
            if "agreement_with_our_f32" in r:
                eq += f"; {100 * r['agreement_with_our_f32']['equal']:.0f}% vs our f32 " \
                      f"(common prefix {r['agreement_with_our_f32']['mean_common_prefix']:.0f})"
            ratio = r.get("decode_ratio")
            lines.append(
                f"| {r['dtype']} | {r['batch']} | {_fmt(r['ours_decode_tok_s'])} | {_fmt(r.get('theirs_decode_tok_s'))} | "
                f"**{ratio:.2f}×** | {gbs_cell} | {'-' if roof is None else f'{100 * roof:.0f}%'} | "
                f"{_fmt(r['ours_ttft_s'], 2)} | {_fmt(r.get('theirs_ttft_s'), 2)} | {eq} |"
                if ratio is not None else
                f"| {r['dtype']} | {r['batch']} | {_fmt(r['ours_decode_tok_s'])} | - | - | {gbs_cell} | "
                f"{'-' if roof is None else f'{100 * roof:.0f}%'} | {_fmt(r['ours_ttft_s'], 2)} | - | {eq} |")
        lines.append("")
    not_idle = [k for k, v in loads.items() if not v.get("idle")]
    if not_idle:
        lines += [f"**Not idle during: {', '.join(not_idle)}** — those figures belong in the 'loaded' table, "
                  f"not the headline.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but plan)")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--device", action="store_true", help="run train/generate on JAX's accelerator (bf16)")
    ap.add_argument("--json", dest="json_out", help="write all figures to this JSON file")
    ap.add_argument("--markdown", help="write the headline tables (markdown) to this file")
    ap.add_argument("--preset", help="model preset (default bench-150m; --quick: small)")
    ap.add_argument("--model", help="a pretrained GGUF file or HF LLaMA folder to use (both sides, f32) instead of "
                    "a random preset")
    ap.add_argument("--batch", type=int, help="train batch (rows)")
    ap.add_argument("--seq", type=int, help="train sequence length")
    ap.add_argument("--steps", type=int, help="timed train steps per side")
    ap.add_argument("--reps", type=int, help="repeats of each generation measurement (median of these; >= 3)")
    ap.add_argument("--gen-batches", help="comma-separated generation batch sizes (default 1,8,32)")
    ap.add_argument("--gen-dtypes", help="comma-separated: float32,bfloat16 (default both)")
    ap.add_argument("--workdir", help="where the HF checkpoint is written (default: a temp dir)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    over = {k: v for k, v in (("preset", args.preset), ("model", args.model), ("train_batch", args.batch),
                              ("seq", args.seq), ("train_steps", args.steps), ("reps", args.reps)) if v is not None}
    if args.gen_batches:
        over["gen_batches"] = tuple(int(x) for x in args.gen_batches.split(","))
    if args.gen_dtypes:
        over["gen_dtypes"] = tuple(x.strip() for x in args.gen_dtypes.split(","))
    sizes = dataclasses.replace(sizes, **over)
    if sizes.reps < 3:
        ap.error(f"--reps {sizes.reps}: the figures are medians of at least 3 repeats")
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
                           "device_mode": args.device, "command": " ".join(sys.argv), "load": {},
                           "idle_rule": {"foreign_cores_max": IDLE_FOREIGN_CORES}}
    log(f"machine: {json.dumps(out['machine'])}")
    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bioinstruct_bench_")
    workdir = pathlib.Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def section(name: str):
        log(f"== {name} (load average {os.getloadavg()[0]:.2f})")
        probe = LoadProbe(name)
        yield
        out["load"][name] = probe.finish()
        log(f"   load: {json.dumps(out['load'][name])}")

    peak_flops = None
    if args.device:
        kind = jax.devices()[0].device_kind
        canon = accelerators.canonical_name(kind)
        peak_flops = accelerators.ACCELERATORS[canon].peak_flops if canon else None
        out["chip_peak_bf16_flops"] = peak_flops
    if "peak" in only or ("train" in only and peak_flops is None):
        with section("peak"):
            out["peak"] = matmul_peak(sizes.matmul_n)
        log("  " + json.dumps({k: round(v, 1) for k, v in out["peak"].items()}))
        if peak_flops is None:
            # Both libraries time the same hardware; the larger best-of-N is the least disturbed by
            # other processes on a shared machine (a conservative, i.e. higher, peak).
            pk = out["peak"]
            peak_flops = 1e9 * (max(pk["jax_f32_gflops"], pk["torch_f32_gflops"]) if not args.device
                                else pk["jax_bf16_gflops"])
    bandwidth = None
    if "bandwidth" in only or ("generate" in only and not args.device):
        with section("bandwidth"):
            out["bandwidth"] = memory_bandwidth(sizes.bandwidth_mib)
        bandwidth = out["bandwidth"]["bandwidth_gbs"] * 1e9
        log("  " + json.dumps(_rounded(out["bandwidth"])))
    if "train" in only:
        with section("train"):
            out["train"] = bench_train(sizes, peak_flops, workdir, args.device)
            out["train"]["machine"] = out["machine"]["label"]
            if not args.quick and not args.device:
                out["train"]["tiny_compile_s"] = tiny_compile_seconds()
        log("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out["train"].items()
                               if not k.endswith("steps_s")}))
    if "generate" in only:
        with section("generate"):
            out["generate"] = bench_generate(sizes, workdir, args.device, bandwidth, out.get("peak"))
            for row in out["generate"]["rows"]:
                row["machine"] = out["machine"]["label"]
    if "data" in only:
        with section("data"):
            out["data"] = bench_data(sizes, out.get("train"))
        log("  " + json.dumps(out["data"]))
    if "memory" in only:
        with section("memory"):
            out["memory"] = bench_memory(sizes, workdir)
        log("  " + json.dumps(out["memory"]))
    if "plan" in only:
        with section("plan"):
            out["plan"] = bench_plan(args.quick)
    out["total_s"] = time.perf_counter() - t_start
    out["machine"]["load_avg_end"] = os.getloadavg()
    out["idle"] = all(v["idle"] for v in out["load"].values())
    md = headline_markdown(out)
    log(f"total {out['total_s']:.1f} s\n\n{md}")
    if not out["idle"]:
        log("WARNING: the machine was not idle for the whole run; these are loaded figures")
    if args.markdown:
        pathlib.Path(args.markdown).write_text(md + "\n")
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(out, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
