"""`--qa-mode loglik --prompt-style lm-eval` against lm-evaluation-harness itself.

lm-eval 0.4.13 (its Python API, HF backend, CPU, float32) runs its own `medqa_4options`,
`medmcqa` and `pubmedqa` task YAMLs, pointed at local `json` files, on a tiny random LLaMA saved
as an HF folder; `python -m bioinstruct_jax.eval` runs the same items from the project's fixture
files. Every item must get the same choice, and every choice's log-likelihood must agree within
1e-4; lm-eval's `acc` / `acc_norm` must equal ours.
"""

from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip("torch", reason="the fixture model is written by transformers (pip install -e '.[test]')")
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a test extra (pip install -e '.[test]')")

from bioinstruct_jax.eval.__main__ import main as eval_main  # noqa: E402
from conftest import REPO_ROOT  # noqa: E402
from hf_fixtures import write_tiny_llama  # noqa: E402

FIX = REPO_ROOT / "tests" / "fixtures" / "eval"
TASKS = {"medqa": "medqa_4options", "medmcqa": "medmcqa", "pubmedqa": "pubmedqa"}
LM_EVAL_YAML = {"medqa": "medqa/medqa.yaml", "medmcqa": "medmcqa/medmcqa.yaml", "pubmedqa": "pubmedqa/pubmedqa.yaml"}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from bioinstruct_jax.data.tokenizer import load_tokenizer_files, train_sentencepiece

    d = tmp_path_factory.mktemp("lm_eval_hf")
    texts = [json.loads(line)["instruction"] + " " + json.loads(line).get("input", "") for line in
             (REPO_ROOT / "seeds" / "bioinstruct_seeds.jsonl").read_text().splitlines() if line.strip()]
    tok = load_tokenizer_files(train_sentencepiece(texts * 2, 400, d / "sp"))
    tok.save(d)
    write_tiny_llama(d, "gqa_tied", vocab_size=tok.vocab_size, max_position_embeddings=2048,
                     initializer_range=0.3)
    return d


def _hf_schema_files(tmp: pathlib.Path) -> dict[str, pathlib.Path]:
    """The fixture items in the schema of lm-eval's Hub datasets (what its doc_to_text reads),
    written from the raw fixture files, not through the project's loaders."""
    out = {}
    medqa = [json.loads(x) for x in (FIX / "medqa" / "US_4_options_test.jsonl").read_text().splitlines() if x.strip()]
    out["medqa"] = [{"id": f"medqa-{i}", "sent1": r["question"],
                     **{f"ending{j}": r["options"][k] for j, k in enumerate("ABCD")},
                     "label": "ABCD".index(r["answer_idx"])} for i, r in enumerate(medqa)]
    medmcqa = [json.loads(x) for x in (FIX / "medmcqa" / "dev.json").read_text().splitlines() if x.strip()]
    out["medmcqa"] = [{**{k: r[k] for k in ("id", "question", "opa", "opb", "opc", "opd")},
                       "cop": int(r["cop"]) - 1} for r in medmcqa]  # the Hub copy's cop is 0-based
    pqal = json.loads((FIX / "pubmedqa" / "ori_pqal.json").read_text())
    truth = json.loads((FIX / "pubmedqa" / "test_ground_truth.json").read_text())
    out["pubmedqa"] = [{"id": pmid, "QUESTION": pqal[pmid]["QUESTION"], "CONTEXTS": pqal[pmid]["CONTEXTS"],
                        "final_decision": label} for pmid, label in truth.items()]
    files = {}
    for name, rows in out.items():
        files[name] = tmp / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def _lm_eval_run(model_dir: pathlib.Path, files: dict[str, pathlib.Path], tmp: pathlib.Path) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_root = pathlib.Path(lm_eval.__file__).parent / "tasks"
    yaml_dir = tmp / "lm_eval_tasks"
    yaml_dir.mkdir()
    for name, rel in LM_EVAL_YAML.items():  # lm-eval's own YAML, only the dataset moved to a local file
        (yaml_dir / f"{name}_local.yaml").write_text(
            f"include: {task_root / rel}\ntask: {name}_local\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {files[name]}\n"
            "training_split: null\nvalidation_split: null\ntest_split: test\n")
    lm = HFLM(pretrained=str(model_dir), backend="causal", dtype="float32", device="cpu", batch_size=4)
    res = simple_evaluate(model=lm, tasks=[f"{n}_local" for n in TASKS], num_fewshot=0, log_samples=True,
                          task_manager=TaskManager(include_path=str(yaml_dir)), bootstrap_iters=0)
    return res


@pytest.mark.slow
def test_lm_eval_style_matches_lm_evaluation_harness(tiny_hf, tmp_path):
    files = _hf_schema_files(tmp_path)
    ref = _lm_eval_run(tiny_hf, files, tmp_path)
    out = tmp_path / "ours"
    results = eval_main(["--model", str(tiny_hf), "--tasks", ",".join(TASKS), "--data-dir", str(FIX),
                         "--qa-mode", "loglik", "--prompt-style", "lm-eval", "--output", str(out),
                         "--batch-size", "3", "--predictor-arg", "dtype=float32"])
    assert results["meta"]["prompt_style"] == "lm-eval"
    for name, lm_task in TASKS.items():
        ours = [json.loads(x) for x in (out / f"{name}.predictions.jsonl").read_text().splitlines()]
        theirs = {str(s["doc"]["id"]): s for s in ref["samples"][f"{name}_local"]}
        assert len(ours) == len(theirs) >= 2, name
        for rec in ours:
            s = theirs[str(rec["id"])]
            ll_ref = [float(r[0]) for r in s["filtered_resps"]]
            assert rec["loglik"] == pytest.approx(ll_ref, abs=1e-4), (name, rec["id"])
            assert rec["choices"][ll_ref.index(max(ll_ref))] == rec["loglik_pred"], (name, rec["id"])
            assert [tuple(a) for a in s["arguments"]] == [(rec["prompt"], " " + c) for c in rec["choices"]]
        entry = results["tasks"][name]
        assert entry["prompt_style"] == "lm-eval" and entry["lm_eval"]["task"] == lm_task
        got = ref["results"][f"{name}_local"]
        assert entry["lm_eval"]["acc"] == pytest.approx(100 * got["acc,none"])
        if "acc_norm,none" in got:
            assert entry["lm_eval"]["acc_norm"] == pytest.approx(100 * got["acc_norm,none"])
