"""`scripts/ablation.sh` end to end on a small labelled file (tiny model, the seeds' tokenizer, a
few steps): every category trains the same number of epochs (so categories of different sizes
get different step counts), eval tasks without data are skipped with one line each, and the
per-group table prints beside the paper's ablation. Also the reports' arithmetic and the
data-size PNG on hand-made run folders, and `labels-needed`."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bioinstruct_jax.eval import ablation, paper_results

REPO = pathlib.Path(__file__).resolve().parents[2]
FIX = pathlib.Path(__file__).parents[1] / "fixtures" / "eval"
SIZES = {"qa": 60, "ie": 130, "gen": 90, "other": 20}


def write_labelled(path: pathlib.Path) -> pathlib.Path:
    rows = []
    for cat, n in SIZES.items():
        for i in range(n):
            rows.append({"id": f"{cat}-{i}", "category": cat,
                         "instruction": f"{cat} task {i}: answer about drug number {i}.",
                         "input": f"The patient takes drug {i} twice a day." if i % 2 else "",
                         "output": f"Drug {i} is given for condition {i % 7}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow  # 3 trainings + 3 evals in subprocesses: ~2 min idle, 7 min on the loaded 2-core machine
def test_ablation_script_equal_epochs_skips_missing_and_prints_paper_table(tmp_path):
    from bioinstruct_jax.jobs.quickstart import train_tokenizer

    data = write_labelled(tmp_path / "labelled.jsonl")
    tok = train_tokenizer(tmp_path / "tok")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device: faster compiles
    env.update(PY=sys.executable, OUT=str(tmp_path / "runs"), EPOCHS="2", PYTHONPATH=str(REPO),
               EVAL_ARGS=(f"--data-dir {FIX} --tasks medqa,medication_status,mts_dialog,icliniq "
                          f"--path icliniq={tmp_path / 'absent.jsonl'} --limit 1 --max-new-tokens 2 "
                          "--batch-size 2"))
    overrides = [f"model.tokenizer={tok}", f"data.train_file={data}", f"data.tfds_data_dir={tmp_path / 'tfds'}",
                 "data.batch_size=16", "data.max_length=96", "train.eval_every=0", "train.save_every=0",
                 "train.tensorboard=false", "train.plot=false", "train.progress_bar=false", "train.log_every=5"]
    proc = subprocess.run(["bash", "scripts/ablation.sh", "configs/tiny.yaml", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = json.loads((tmp_path / "runs" / "ablation.json").read_text())["runs"]
    assert set(runs) == {"qa", "ie", "gen"}
    for cat, r in runs.items():
        assert r["epochs_setting"] == 2.0
        assert SIZES[cat] * 0.75 <= r["train_records"] < SIZES[cat]  # tiny.yaml holds out 10% by hash
        assert r["steps"] == 2 * r["train_records"] // 16  # steps follow the category's size
        assert 2 - 16 / r["train_records"] < r["epochs"] <= 2
        assert set(r["groups"]) == {"qa", "ie", "gen"}
    assert len({r["steps"] for r in runs.values()}) == 3  # not one fixed step count
    skips = [l for l in proc.stderr.splitlines() if l.startswith("skip icliniq:")]
    assert len(skips) == 3  # one line per category's eval
    assert "Category ablation" in proc.stdout
    out = proc.stdout.split("Category ablation", 1)[1]  # the eval runs print their own tables before it
    assert "QA paper" in out
    for cat, vals in paper_results.PAPER_ABLATION.items():
        line = next(l for l in out.splitlines() if l.split() and l.split()[0] == cat)
        assert f"{vals['qa']:.2f}" in line and f"{vals['ie']:.2f}" in line and f"{vals['gen']:.2f}" in line


def _fake_run(d: pathlib.Path, train_file: pathlib.Path, tfds_dir: pathlib.Path, config: str, steps: int,
              tasks: dict) -> None:
    """A finished run's folder: run_config.yaml, its last checkpoint step folder, eval/results.json."""
    from bioinstruct_jax.config import dump_yaml, load_run_config

    cfg = load_run_config(None, [f"data.train_file={train_file}", f"data.tfds_data_dir={tfds_dir}",
                                 f"data.tfds_config={config}", "data.batch_size=8", "train.steps=0", "train.epochs=1"])
    (d / "checkpoints" / str(steps)).mkdir(parents=True)
    (d / "run_config.yaml").write_text(dump_yaml(cfg))
    (d / "eval").mkdir()
    (d / "eval" / "results.json").write_text(json.dumps({"tasks": tasks}))


def _tasks(qa: float, ie: float, gen: float, judge: bool) -> dict:
    g = {"judge_coherence": gen} if judge else {"rougeL": gen}
    return {"medqa": {"metrics": {"accuracy": qa}}, "pubmedqa": {"metrics": {"accuracy": qa + 10}},
            "medication_status": {"metrics": {"f1": ie}}, "mts_dialog": {"metrics": g}}


def test_reports_arithmetic_png_and_labels_needed(tmp_path, capsys):
    data = write_labelled(tmp_path / "labelled.jsonl")
    runs = tmp_path / "runs"
    _fake_run(runs / "qa", data, tmp_path / "tfds", "qa", 7, _tasks(40.0, 60.0, 4.0, judge=True))
    _fake_run(runs / "ie", data, tmp_path / "tfds", "ie", 15, _tasks(30.0, 70.0, 30.0, judge=False))
    assert ablation.main(["category", "--runs", str(runs), "--categories", "qa", "ie"]) == 0
    out = capsys.readouterr().out
    qa_line = next(l for l in out.splitlines() if l.startswith("qa "))
    # QA 45 = mean(40, 50); IE 60; GEN 4.00 on the judge; beside 53.46 / 69.07 / 4.36
    assert qa_line.split()[4:10] == ["45.00", "53.46", "60.00", "69.07", "4.00", "4.36"]
    ie_line = next(l for l in out.splitlines() if l.startswith("ie "))
    assert "30.00 (rougeL)" in ie_line  # not the paper's metric: marked, never passed off as comparable
    saved = json.loads((runs / "ablation.json").read_text())["runs"]
    assert saved["qa"]["epochs"] == pytest.approx(7 * 8 / saved["qa"]["train_records"])

    sizes = tmp_path / "sizes"
    _fake_run(sizes / "50", data, tmp_path / "tfds", "all_50", 6, _tasks(35.0, 50.0, 3.0, judge=True))
    _fake_run(sizes / "200", data, tmp_path / "tfds", "all_200", 25, _tasks(45.0, 65.0, 4.0, judge=True))
    assert ablation.main(["data-size", "--runs", str(sizes), "--sizes", "50", "200"]) == 0
    out = capsys.readouterr().out
    png = sizes / "data_size.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = json.loads((sizes / "data_size.json").read_text())
    assert [curve["runs"][s]["train_records"] for s in ("50", "200")][0] == 50
    assert curve["paper_points"]["qa"][0][0] == 0 and curve["paper_points"]["qa"][1][0] == 25_005
    # the paper's LLaMA 2 7B QA mean of its 5 tasks at 0 and at 25,005 instructions
    assert curve["paper_points"]["qa"][0][1] == pytest.approx((30.37 + 29.41 + 57.20 + 65.86 + 33.35) / 5)
    assert "paper (LLaMA 2 7B)" in out

    unlabelled = tmp_path / "plain.jsonl"
    unlabelled.write_text(json.dumps({"instruction": "a b c", "input": "", "output": "d"}) + "\n")
    assert ablation.labels_needed(None, [f"data.train_file={data}"], "L.jsonl") is None
    assert ablation.labels_needed(None, [f"data.train_file={unlabelled}"], "L.jsonl") == "L.jsonl"
    assert ablation.labels_needed(None, [f"data.train_file={unlabelled}",
                                         f"data.labels_file={tmp_path / 'x.jsonl'}"], "L") == str(tmp_path / "x.jsonl")
