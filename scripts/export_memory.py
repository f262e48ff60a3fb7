"""Peak host memory of a merged export: `python scripts/export_memory.py [--layers 4 --hidden 2048 ...]`.

Builds a random f32 LLaMA (default: hidden 2048, 4 layers, vocab 32000 = 1.33 GB) with LoRA on every
projection and the LM head, then exports it merged into shards of `--max-shard-mb`, and prints JSON
with the peak resident-memory growth during the export (Linux: the VmHWM high-water mark reset via
/proc/self/clear_refs just before exporting; a 2 ms RSS sampler as a fallback), the largest tensor
and the total written. Run it in a fresh process: the numbers are for this process only.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import bioinstruct_jax  # noqa: E402,F401 - before jax: keeps libtpu away without a TPU (parallel/platforms.py)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from bioinstruct_jax.checkpoint.safetensors_io import SafetensorsFile  # noqa: E402
from bioinstruct_jax.export.merged import export_merged  # noqa: E402
from bioinstruct_jax.model.config import LlamaConfig  # noqa: E402
from bioinstruct_jax.model.decoder import Llama  # noqa: E402
from bioinstruct_jax.model.lora import LoraConfig, apply_lora, lora_modules  # noqa: E402


def status_kib(field: str) -> int | None:
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = status_kib("VmHWM"), status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


class _Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)


def measure(hidden: int, intermediate: int, layers: int, vocab: int, max_shard_mb: float, out_dir: pathlib.Path,
            dtype: str | None = None) -> dict:
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128)
    t0 = time.perf_counter()
    model = Llama(config, rngs=nnx.Rngs(0), param_dtype=jnp.float32)
    apply_lora(model, LoraConfig(r=8, dropout=0.0, target_regex=r"(layers/\d+/(self_attn|mlp)/\w+_proj)|lm_head"),
               nnx.Rngs(1))
    for _, m in lora_modules(model):  # non-zero B so every adapted tensor really is merged
        m.lora_b.set_value(jnp.full(m.lora_b.shape, 1e-3, jnp.float32))
    build_s = time.perf_counter() - t0
    model_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(nnx.state(model)))

    proc = psutil.Process()
    base_rss = proc.memory_info().rss
    kernel_peak = _reset_peak()
    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    out = export_merged(model, out_dir, dtype=dtype, max_shard_bytes=int(max_shard_mb * 1e6))
    export_s = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    peak = max(sampler.peak, (status_kib("VmHWM") or 0) * 1024 if kernel_peak else 0)

    shards = sorted(out.glob("*.safetensors"))
    sizes = []
    for s in shards:
        f = SafetensorsFile(s)
        sizes += [f.get(k).nbytes for k in f.keys()]
    return {
        "config": {"hidden": hidden, "intermediate": intermediate, "layers": layers, "vocab": vocab,
                   "params": config.num_params(), "dtype": dtype or "float32"},
        "model_bytes_in_memory": model_bytes,
        "written_bytes": sum(sizes),
        "shards": len(shards),
        "largest_tensor_bytes": max(sizes),
        "baseline_rss_bytes": base_rss,
        "peak_rss_growth_bytes": peak - base_rss,
        "peak_growth_over_largest_tensor": round((peak - base_rss) / max(sizes), 3),
        "peak_source": "VmHWM (clear_refs) + 2 ms sampler" if kernel_peak else "2 ms sampler",
        "build_s": round(build_s, 1),
        "export_s": round(export_s, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5504)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--max-shard-mb", type=float, default=300.0)
    p.add_argument("--dtype", default=None, help="export dtype (default: float32, the model's)")
    p.add_argument("--out", default=None, help="export directory (default: a temporary one, deleted)")
    args = p.parse_args(argv)
    if args.out:
        result = measure(args.hidden, args.intermediate, args.layers, args.vocab, args.max_shard_mb,
                         pathlib.Path(args.out), args.dtype)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(args.hidden, args.intermediate, args.layers, args.vocab, args.max_shard_mb,
                             pathlib.Path(tmp) / "merged", args.dtype)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    sys.exit(main())
