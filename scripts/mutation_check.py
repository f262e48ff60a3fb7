"""Mutation check: does the test suite catch a named list of one-line bugs in critical code?

Each mutation replaces one exact line fragment in one file of a *temporary copy* of the repository
(package, tests, scripts, seeds, configs; the working tree is never touched), then runs only the
tests that cover that code on the copy (PYTHONPATH points at the copy, so subprocesses the tests
start import the mutated package too). A mutation is CAUGHT when pytest reports a failing test,
MISSED when the covering tests pass, and ERROR when the mutation no longer applies (the fragment is
gone or appears more than once) or pytest could not run (exit code other than 0 / 1).

Not part of CI: each mutation recompiles the covering tests' JAX programs (minutes on 2 cores).
Every bug found in the code should add its mutation to MUTATIONS. Results: docs/MUTATIONS.md.

    python scripts/mutation_check.py                 # all mutations
    python scripts/mutation_check.py --only rope-llama3-ignored,lora-scale
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py --unmutated     # the covering tests must pass on the copy as is
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
COPIED = ("bioinstruct_jax", "tests", "scripts", "seeds", "configs", "pyproject.toml", "README.md")


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids relative to the repository root
    why: str  # the bug it stands for


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("rope-llama3-ignored", "bioinstruct_jax/model/rope.py",
             "    return jnp.where(medium, blended, scaled)", "    return inv_freq",
             ("tests/model/test_llama_parity.py::test_bf16_logits_close_to_transformers_f32",),
             "llama3 RoPE scaling rule ignored (the bf16 parity test alone must catch it)"),
    Mutation("rope-llama3-no-blend", "bioinstruct_jax/model/rope.py",
             "    return jnp.where(medium, blended, scaled)", "    return scaled",
             ("tests/model/test_llama_parity.py::test_f32_logits_match_transformers_on_left_padded_batch",),
             "llama3 RoPE: the middle band not blended"),
    Mutation("causal-mask-dropped", "bioinstruct_jax/model/attention.py",
             "    causal = jnp.tril(jnp.ones((t, t), jnp.bool_))", "    causal = jnp.ones((t, t), jnp.bool_)",
             ("tests/model/test_llama_parity.py::test_f32_logits_match_transformers_on_left_padded_batch",),
             "tokens attend to later tokens"),
    Mutation("segment-mask-dropped", "bioinstruct_jax/model/attention.py",
             "    same = segment_ids[:, :, None] == segment_ids[:, None, :]",
             "    same = segment_ids[:, :, None] >= 0",
             ("tests/model/test_llama_parity.py::test_right_padding_and_segments_match_unpadded",),
             "packed sequences attend across their boundary"),
    Mutation("cache-padding-attended", "bioinstruct_jax/model/attention.py",
             "    mask = in_reach[None] & valid[:, None, :]",
             "    mask = in_reach[None] & (valid[:, None, :] | True)",
             ("tests/infer/test_generation.py::test_greedy_matches_transformers_generate_on_left_padded_batch",),
             "decoding attends to the left padding held in the KV cache"),
    Mutation("lora-scale-swapped", "bioinstruct_jax/config/sections.py",
             "        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)",
             "        return self.alpha / (self.r if self.rslora else math.sqrt(self.r))",
             ("tests/export/test_export.py::test_peft_export_loads_in_peft_and_imports_back",),
             "LoRA scale alpha/r and rsLoRA alpha/sqrt(r) swapped (checked against peft, not a hand value)"),
    Mutation("loss-mask-ignored", "bioinstruct_jax/train/step.py",
             '    mask = batch["loss_mask"].astype(jnp.float32)',
             '    mask = jnp.ones_like(batch["loss_mask"], jnp.float32)',
             ("tests/train/test_train.py::test_step_loss_is_the_mean_cross_entropy_over_response_tokens_only",),
             "prompt tokens trained on as well as the response"),
    Mutation("grad-accum-double-average", "bioinstruct_jax/train/step.py",
             "        grads = jax.tree.map(lambda g: g / denom, grads)",
             '        grads = jax.tree.map(lambda g: g / denom / batch["input_ids"].shape[0], grads)',
             ("tests/train/test_train.py::test_grad_accumulation_equals_one_big_batch",),
             "gradients divided by grad_accum on top of the token count"),
    Mutation("grad-accum-last-micro-batch", "bioinstruct_jax/train/step.py",
             "            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)",
             "            grads_acc = grads",
             ("tests/train/test_train.py::test_grad_accumulation_equals_one_big_batch",),
             "only the last micro-batch's gradients kept"),
    Mutation("optimization-barrier-removed", "bioinstruct_jax/train/step.py",
             "            base_mb, mb = jax.lax.optimization_barrier((base, mb))",
             "            base_mb = base",
             ("tests/train/test_plan.py::test_micro_batch_barrier_keeps_gathered_weights_inside_the_scan",),
             "frozen weights' all-gathers hoisted out of the accumulation scan (memory regression)"),
    Mutation("eos-ignored-in-decode", "bioinstruct_jax/infer/engine.py",
             "            done = done | hit | (i + 2 >= max_new)", "            done = done | (i + 2 >= max_new)",
             ("tests/infer/test_generation.py::test_eos_and_stop_sequences_end_the_loop_early",),
             "decoding runs past EOS"),
    Mutation("eos-kept-in-text", "bioinstruct_jax/infer/engine.py",
             '                    tokens[i], reasons[i] = row[:-1], "eos"',
             '                    tokens[i], reasons[i] = row, "eos"',
             ("tests/infer/test_generation.py::test_eos_and_stop_sequences_end_the_loop_early",),
             "the EOS token left in the returned tokens"),
    Mutation("generate-cli-prints-nothing", "bioinstruct_jax/infer/cli.py",
             '            print(json.dumps({"prompt": prompt, "generation": text}, ensure_ascii=False))',
             '            print(json.dumps({"prompt": prompt, "generation": ""}, ensure_ascii=False))',
             ("tests/infer/test_generation_loading.py::test_load_predictor_and_cli_on_hf_directory",),
             "the generate CLI prints an empty generation"),
    Mutation("export-transpose-dropped", "bioinstruct_jax/export/merged.py",
             "    base = kernel.T if transpose else kernel", "    base = kernel",
             ("tests/export/test_export.py::test_merged_export_loads_in_transformers_with_equal_logits",),
             "merged kernels written [in, out] instead of HF's [out, in] (square q/o projections load)"),
    Mutation("peft-name-prefix", "bioinstruct_jax/checkpoint/peft.py",
             'PEFT_PREFIX = "base_model.model."', 'PEFT_PREFIX = "base_model."',
             ("tests/export/test_export.py::test_peft_export_loads_in_peft_and_imports_back",),
             "PEFT tensor names without the inner `model.`"),
    Mutation("peft-target-modules-all", "bioinstruct_jax/checkpoint/peft.py",
             "    if every == set(adapted):", "    if True:",
             ("tests/export/test_export.py::test_peft_export_loads_in_peft_and_imports_back",),
             "PEFT target_modules as bare names although only some layers are adapted"),
    Mutation("rouge-threshold-strict", "bioinstruct_jax/data/filters.py",
             "        return score >= self.threshold", "        return score > self.threshold",
             ("tests/data/test_filters.py",),
             "an instruction exactly at ROUGE-L 0.7 kept (the paper rejects >= 0.7)"),
    Mutation("rouge-threshold-bound", "bioinstruct_jax/data/filters.py",
             "        cand = np.nonzero(bound >= self.threshold - 1e-9)[0]",
             "        cand = np.nonzero(bound > self.threshold + 1e-9)[0]",
             ("tests/data/test_filters.py",),
             "the pool's upper-bound prefilter skips entries exactly at the threshold"),
    Mutation("sliding-window-dropped-in-decode", "bioinstruct_jax/model/attention.py",
             "        in_reach = in_reach & (query_slot - key_slot < sliding_window)", "        pass",
             ("tests/model/test_qwen2_mistral_parity.py::test_greedy_tokens_match_transformers_generate",),
             "cached decoding of a Mistral model attends past its sliding window"),
    Mutation("qkv-bias-dropped", "bioinstruct_jax/model/layers.py",
             "        return y if self.bias is None else y + self.bias[...].astype(y.dtype)", "        return y",
             ("tests/model/test_qwen2_mistral_parity.py::test_f32_logits_match_transformers_on_left_padded_batch",),
             "Qwen2's q/k/v biases loaded but never added"),
    Mutation("cudnn-path-mask-dropped", "bioinstruct_jax/model/attention.py",
             "        else:\n            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)",
             "        else:\n            out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_impl)",
             ("tests/model/test_llama_parity.py::test_dot_product_attention_path_equals_einsum",),
             "the model.attention_impl=cudnn path ignores the causal / padding mask"),
    Mutation("resume-data-position-lost", "bioinstruct_jax/train/loop.py",
             "        train_iter.set_state(data_state)", "        pass",
             ("tests/integration/test_cli.py::test_train_cli_sigkill_then_same_command_ends_with_the_same_weights",),
             "a resumed run restarts the data from the first batch"),
    Mutation("resume-rng-not-restored", "bioinstruct_jax/train/loop.py",
             '    lora, opt_state, rng = restored["lora"], restored["opt"], restored["rng"]',
             '    lora, opt_state, rng = restored["lora"], restored["opt"], state.rng',
             ("tests/integration/test_cli.py::test_train_cli_sigkill_then_same_command_ends_with_the_same_weights",),
             "a resumed run draws LoRA dropout masks from the initial RNG state again"),
    Mutation("keep-best-inverted", "bioinstruct_jax/checkpoint/orbax.py",
             'get_metric_fn=lambda m: -float(m["val_loss"])', 'get_metric_fn=lambda m: float(m["val_loss"])',
             ("tests/integration/test_cli.py::test_train_cli_keeps_last_and_best_checkpoints",),
             "keep_best keeps the worst validation loss"),
    Mutation("base-install-jinja2-dropped", "pyproject.toml",
             '  "jinja2>=3.1",', "",
             ("tests/integration/test_base_install.py::test_quickstart_runs_on_the_base_install_alone",),
             "the base install lacks jinja2: every chat-template prompt of the quickstart fails on a fresh machine"),
    Mutation("bench-memory-preset-child", "scripts/benchmark.py",
             '*(["--model", sizes.model] if sizes.model else []),', "",
             ("tests/integration/test_benchmark_smoke.py::test_model_flag_benchmarks_the_given_gguf_on_both_sides",),
             "benchmark --model: the memory section's fresh process measures the random preset"),
    Mutation("plan-ignores-model-file", "bioinstruct_jax/train/plan.py",
             "preset=run.model.preset, hf_path=run.model.hf_path,", "preset=run.model.preset, hf_path=\"\",",
             ("tests/train/test_plan.py::test_plan_of_a_config_naming_a_model_file_plans_that_model",),
             "the planner plans the preset though the config names a model file (model.hf_path)"),
    Mutation("plan-ignores-target-regex", "bioinstruct_jax/train/plan.py",
             "target_regex=run.lora.target_regex,", "target_regex=\"\",",
             ("tests/train/test_plan.py::test_plan_of_a_config_naming_a_model_file_plans_that_model",),
             "the planner adapts q,k,v,o though the config's lora.target_regex adapts every projection"),
    Mutation("tensorboard-resume-duplicates", "bioinstruct_jax/train/metrics.py",
             "purge_step=purge)", "purge_step=None)",
             ("tests/train/test_metrics_log.py",),
             "a resumed run's TensorBoard shows the steps logged after the checkpoint twice"),
)


def copy_tree(dest: pathlib.Path) -> None:
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def apply(root: pathlib.Path, m: Mutation) -> None:
    path = root / m.file
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        raise ValueError(f"{m.file}: the fragment of {m.name!r} occurs {count} times (expected once): {m.old!r}")
    path.write_text(text.replace(m.old, m.new))


def run_tests(root: pathlib.Path, tests: tuple[str, ...], timeout: int) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout} s"
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    failed = [x[:160] for x in lines if x.startswith(("FAILED ", "ERROR "))]  # which test caught it, and why
    return proc.returncode, " | ".join(failed + lines[-1:]) if lines else proc.stderr[-300:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma list of mutation names")
    p.add_argument("--list", action="store_true", help="print the mutations and exit")
    p.add_argument("--unmutated", action="store_true", help="run each covering test set on the unchanged copy")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per mutation")
    args = p.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {m.name for m in MUTATIONS}
        if unknown:
            p.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
        chosen = [m for m in MUTATIONS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:32s} {m.file}: {m.why}\n{'':32s} tests: {' '.join(m.tests)}")
        return 0
    results = []
    for m in chosen:
        with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
            root = pathlib.Path(tmp)
            copy_tree(root)
            start = time.time()
            try:
                if not args.unmutated:
                    apply(root, m)
                rc, summary = run_tests(root, m.tests, args.timeout)
            except ValueError as err:
                rc, summary = -2, str(err)
            wall = time.time() - start
        if args.unmutated:
            verdict = "PASS" if rc == 0 else "FAIL"
        else:
            verdict = {0: "MISSED", 1: "CAUGHT"}.get(rc, "ERROR")
        results.append((m.name, verdict))
        print(f"{verdict:7s} {m.name:32s} {wall:6.0f} s  {summary}", flush=True)
    bad = [n for n, v in results if v not in ("CAUGHT", "PASS")]
    print(f"\n{len(results) - len(bad)} / {len(results)} "
          f"{'passed unmutated' if args.unmutated else 'caught'}" + (f"; not: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
