"""Every export carries a model card: README.md with YAML front matter as the hub reads it, and the run's facts.

A 3-step training run (preset base, SentencePiece tokenizer) with an eval results.json in its folder
is exported as `both` (merged + PEFT) and as `gguf`; each README.md is parsed: front matter keys,
the train / val files with their sha256 (computed here by hashlib), the LoRA and optimizer
settings, the step, and the eval row read from the run's results.json (named by path).
"""

from __future__ import annotations

import hashlib
import json

import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from bioinstruct_jax.export import __main__ as export_cli
from bioinstruct_jax.export.model_card import CardInfo, model_card

pytestmark = pytest.mark.slow  # a 3-step training run (~60 s here) and three exports


def front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from bioinstruct_jax.config import load_run_config
    from bioinstruct_jax.data.tokenizer import train_sentencepiece
    from bioinstruct_jax.train import loop as train
    from train_helpers import tiny_overrides, write_task

    root = tmp_path_factory.mktemp("card")
    train_file, val_file, _ = write_task(root / "data", n_train=40, n_val=10)
    texts = [line for f in (train_file, val_file) for line in f.read_text().splitlines()]
    sp = train_sentencepiece(texts, 300, root / "tok")
    run_dir = root / "run"
    cfg = load_run_config(None, tiny_overrides(run_dir, train_file, val_file, **{
        "train.steps": 3, "train.save_every": 3, "optim.warmup_steps": 0, "optim.lr": 0.05,
        "model.tokenizer": str(sp), "train.async_checkpointing": False}))
    train.run(cfg, verbose=False)
    results = {"meta": {"model": str(run_dir)}, "tasks": {"pubmedqa": {
        "n": 50, "headline": "accuracy", "metrics": {"accuracy": 61.5, "accuracy_ci_low": 47.6}}}}
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    return run_dir, train_file, val_file


@pytest.mark.parametrize("fmt,folders,library", [("both", ("merged", "peft"), ("transformers", "peft")),
                                                  ("gguf", ("",), ("gguf",))])
def test_every_export_has_a_card_with_the_runs_facts(run, tmp_path, fmt, folders, library):
    run_dir, train_file, val_file = run
    out = tmp_path / "out"
    assert export_cli.main(["--checkpoint", str(run_dir), "--out", str(out), "--format", fmt]) == 0
    for folder, lib in zip(folders, library):
        front, body = front_matter((out / folder / "README.md").read_text())
        assert front["library_name"] == lib and "bioinstruct-jax" in front["tags"]
        assert "base_model" not in front  # a preset's random weights are no hub model
        assert ("gguf" in front["tags"]) == (lib == "gguf")
        assert "random weights (preset 'tiny', seed 0)" in body
        for f in (train_file, val_file):
            assert f"`{f}` | {hashlib.sha256(f.read_bytes()).hexdigest()}" in body
        assert "| r | 16 |" in body and "| lr | 0.05 |" in body  # LoRA and optimizer settings
        assert "exported at step 3 of 3" in body
        assert f"Read from `{run_dir / 'eval' / 'results.json'}`" in body
        assert "| pubmedqa | accuracy | 61.5 | 50 | accuracy_ci_low 47.6 |" in body
        if lib == "gguf":
            assert 'gguf_file="model-F32.gguf"' in body
    if fmt == "gguf":  # import -> tune (train) -> GGUF export -> import: the same model
        from bioinstruct_jax.checkpoint.hf import load_pretrained
        from bioinstruct_jax.checkpoint.restore import restore_run

        ids = jnp.asarray([[1, 17, 200, 45, 9, 120, 2, 33]])
        back, _ = load_pretrained(out / "model-F32.gguf", dtype="float32")
        np.testing.assert_allclose(np.asarray(back(ids)), np.asarray(restore_run(str(run_dir)).model(ids)),
                                   atol=1e-4, rtol=0)


def test_card_front_matter_names_a_hub_base_and_its_license(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a base\n")
    from bioinstruct_jax.export.model_card import base_license

    info = CardInfo(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", license=base_license(base))
    front, body = front_matter(model_card(info, "merged"))
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["license"] == "apache-2.0"
    assert "No eval results were found" in body
    front, _ = front_matter(model_card(CardInfo(base_model=str(base)), "peft"))  # a local path: not a hub id
    assert "base_model" not in front and "license" not in front
