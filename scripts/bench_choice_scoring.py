"""Log-likelihood QA scoring speed: `python -m bioinstruct_jax.eval --qa-mode loglik --prompt-style
lm-eval` against lm-evaluation-harness's HF backend (torch) on the same model, items and machine.

    .venv/bin/python scripts/bench_choice_scoring.py --data-dir ../shared/data --n-medqa 48 --n-pubmedqa 24

The model is SmolLM2-135M-Instruct (the installed GGUF file, or --model FILE.gguf), dequantised by
transformers and saved as an HF folder in float32, which both sides load. Per task: lm-eval's
`simple_evaluate` (its own task YAML pointed at a local json file, batch --batch-size) and our eval
CLI (same batch size) on the first N items; ours once cold (compilation included) and twice warm,
and once with the batched single-token path switched off (one row per (prompt, choice) through
`Predictor.score`), to show what that path buys. Printed: items/s of each, the ratio ours-warm /
lm-eval, the CPU (model, cores, avx2/avx512/amx flags) and the load average before and after
(the figures of a shared machine are not idle figures).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bioinstruct_jax.eval import tasks as tasks_mod  # noqa: E402
from bioinstruct_jax.eval.__main__ import main as eval_main  # noqa: E402
from bioinstruct_jax.infer.predictor import load_predictor  # noqa: E402
from bioinstruct_jax.jobs.mini_reproduction import default_model  # noqa: E402


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
        flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
    except (OSError, subprocess.CalledProcessError):
        model, flags = platform.processor() or "?", []
    simd = [f for f in ("avx2", "avx512f", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags: {', '.join(simd) or 'none of avx2/avx512f/amx'}"


def hf_folder(gguf_path: str, directory: pathlib.Path) -> pathlib.Path:
    import torch
    import transformers

    p = pathlib.Path(gguf_path)
    tok = transformers.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # dequantised already; a GGUF-marked model refuses to save
        del config.quantization_config
    model = type(loaded)(config).to(torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def lm_eval_files(data_dir: str, n: dict[str, int], tmp: pathlib.Path) -> dict[str, pathlib.Path]:
    data = tasks_mod.DataSource(data_dir)
    files = {}
    for name, k in n.items():
        exs = tasks_mod.get_task(name).load(data)[:k]
        if name == "medqa":
            rows = [{"id": e.id, "sent1": e.text, **{f"ending{j}": e.options[L] for j, L in enumerate("ABCD")},
                     "label": "ABCD".index(e.answer)} for e in exs]
        else:
            rows = [{"id": e.id, "QUESTION": e.text, "CONTEXTS": e.meta["contexts"], "final_decision": e.answer}
                    for e in exs]
        files[name] = tmp / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


LM_EVAL_YAML = {"medqa": "medqa/medqa.yaml", "pubmedqa": "pubmedqa/pubmedqa.yaml"}


def time_lm_eval(model_dir: pathlib.Path, name: str, file: pathlib.Path, batch: int, tmp: pathlib.Path) -> float:
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    ydir = tmp / f"yaml_{name}"
    ydir.mkdir(exist_ok=True)
    root = pathlib.Path(lm_eval.__file__).parent / "tasks"
    (ydir / f"{name}_bench.yaml").write_text(
        f"include: {root / LM_EVAL_YAML[name]}\ntask: {name}_bench\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {file}\ntraining_split: null\nvalidation_split: null\n"
        "test_split: test\n")
    lm = HFLM(pretrained=str(model_dir), backend="causal", dtype="float32", device="cpu", batch_size=batch)
    tm = TaskManager(include_path=str(ydir))
    t0 = time.perf_counter()
    simple_evaluate(model=lm, tasks=[f"{name}_bench"], num_fewshot=0, task_manager=tm, bootstrap_iters=0)
    return time.perf_counter() - t0


class RowsOnly:
    """The predictor without `score_choices`: the runner falls back to one row per (prompt, choice)."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.template = inner, inner.tokenizer, inner.template

    def generate(self, *a, **k):
        return self.inner.generate(*a, **k)

    def score(self, prompts, continuations):
        return self.inner.score(prompts, continuations)


def time_ours(predictor, model_dir, name: str, n: int, batch: int, out: pathlib.Path) -> float:
    t0 = time.perf_counter()
    eval_main(["--model", str(model_dir), "--tasks", name, "--data-dir", ARGS.data_dir, "--limit", str(n),
               "--qa-mode", "loglik", "--prompt-style", "lm-eval", "--batch-size", str(batch),
               "--output", str(out)], predictor=predictor)
    return time.perf_counter() - t0


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--model", default="", help="a GGUF file (default: the installed SmolLM2-135M-Instruct)")
    p.add_argument("--n-medqa", type=int, default=48)
    p.add_argument("--n-pubmedqa", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="warm runs of ours (the best is kept)")
    ARGS = p.parse_args()
    load_before = os.getloadavg()
    print(f"CPU: {cpu_line()}; load average before {load_before}", flush=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_choice_"))
    model_dir = hf_folder(ARGS.model or default_model(), tmp / "hf")
    n = {"medqa": ARGS.n_medqa, "pubmedqa": ARGS.n_pubmedqa}
    files = lm_eval_files(ARGS.data_dir, {k: v for k, v in n.items() if v > 0}, tmp)
    predictor = load_predictor(str(model_dir), batch_size=ARGS.batch_size, dtype="float32")
    results = {}
    def note(what: str, seconds: float, k: int) -> None:  # each figure as it is measured
        print(f"measured {what}: {k} items in {seconds:.1f} s = {k / seconds:.3f} items/s, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)

    for name, k in n.items():
        if k <= 0:
            continue
        cold = time_ours(predictor, model_dir, name, k, ARGS.batch_size, tmp / f"ours_cold_{name}")
        note(f"{name} ours cold (compile included)", cold, k)
        warm = [time_ours(predictor, model_dir, name, k, ARGS.batch_size, tmp / f"ours_warm{i}_{name}")
                for i in range(ARGS.repeats)]
        note(f"{name} ours warm (best of {ARGS.repeats})", min(warm), k)
        theirs = time_lm_eval(model_dir, name, files[name], ARGS.batch_size, tmp)
        note(f"{name} lm-eval HF backend", theirs, k)
        rows = min(time_ours(RowsOnly(predictor), model_dir, name, k, ARGS.batch_size, tmp / f"ours_rows{i}_{name}")
                   for i in range(1 + ARGS.repeats))  # the first compiles the row programs
        note(f"{name} ours, one row per (prompt, choice)", rows, k)
        best = min(warm)
        results[name] = {"items": k, "lm_eval_items_s": k / theirs, "ours_cold_items_s": k / cold,
                         "ours_warm_items_s": k / best, "ours_rows_items_s": k / rows,
                         "ratio_ours_warm_vs_lm_eval": theirs / best,
                         "ratio_single_token_path_vs_rows": rows / best}
    load_after = os.getloadavg()
    print(f"CPU: {cpu_line()}")
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}")
    print(f"model: {ARGS.model or default_model()} (float32 HF folder), batch {ARGS.batch_size}, lm-eval style, 0-shot")
    print("task      items  lm-eval HF it/s  ours cold it/s  ours warm it/s  ours rows-only it/s  ours/lm-eval  single-token/rows")
    for name, r in results.items():
        print(f"{name:9} {r['items']:5}  {r['lm_eval_items_s']:15.2f}  {r['ours_cold_items_s']:14.2f}  "
              f"{r['ours_warm_items_s']:14.2f}  {r['ours_rows_items_s']:19.2f}  {r['ratio_ours_warm_vs_lm_eval']:12.2f}  "
              f"{r['ratio_single_token_path_vs_rows']:17.2f}")
    print(json.dumps({"cpu": cpu_line(), "load_before": load_before, "load_after": load_after, "results": results}))


if __name__ == "__main__":
    main()
