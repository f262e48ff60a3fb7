"""`python -m bioinstruct_jax.export --checkpoint RUN_DIR`: a training run's Orbax checkpoint to HF and PEFT."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from bioinstruct_jax.export import __main__ as export_cli
from bioinstruct_jax.export import merged as export
from bioinstruct_jax.model.lora import lora_modules
from test_export import ours, torch_logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def test_cli_exports_a_training_checkpoint(tmp_path):
    """train.run (3 steps, preset base, SentencePiece tokenizer) -> `--checkpoint --format both`:
    the merged model and tokenizer load in transformers; the adapter loads in peft on the base."""
    from bioinstruct_jax.train import loop as train
    from bioinstruct_jax.checkpoint.restore import restore_run
    from bioinstruct_jax.config import load_run_config
    from bioinstruct_jax.data.tokenizer import train_sentencepiece
    from train_helpers import tiny_overrides, write_task

    train_file, val_file, _ = write_task(tmp_path / "data")
    texts = [line for f in (train_file, val_file) for line in f.read_text().splitlines()]
    sp = train_sentencepiece(texts, 300, tmp_path / "tok")
    run_dir = tmp_path / "run"
    cfg = load_run_config(None, tiny_overrides(run_dir, train_file, val_file, **{
        "train.steps": 3, "train.save_every": 3, "optim.warmup_steps": 0, "optim.lr": 0.05,
        "model.tokenizer": str(sp), "train.async_checkpointing": False}))
    train.run(cfg, verbose=False)
    run = restore_run(str(run_dir))
    model, run_cfg, tok = run.model, run.config, run.tokenizer
    assert tok == str(sp)
    ids = np.array([[1, 17, 200, 45, 9, 120, 2, 33]])
    logits = ours(model, ids)

    out = tmp_path / "export"
    assert export_cli.main(["--checkpoint", str(run_dir), "--out", str(out), "--format", "both"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    np.testing.assert_allclose(torch_logits(hf, ids), logits, atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out / "merged")
    from bioinstruct_jax.data.tokenizer import load_tokenizer_files

    text = "Capitalise each symbol. s3 s5"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == load_tokenizer_files(sp).encode(text)

    acfg = json.loads((out / "peft" / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == "preset:tiny:seed0" and acfg["r"] == 16
    # The preset's random base as an HF model: the same checkpoint with every B zeroed.
    for _, m in lora_modules(model):
        m.lora_b.set_value(jnp.zeros_like(m.lora_b[...]))
    export.export_merged(model, tmp_path / "base")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    np.testing.assert_allclose(torch_logits(peft.PeftModel.from_pretrained(base, out / "peft").eval(), ids),
                               logits, atol=1e-4, rtol=0)
    # A second export into the same place is refused, and --step picks a step that exists.
    assert export_cli.main(["--checkpoint", str(run_dir), "--out", str(out), "--format", "both"]) == 2
    assert export_cli.main(["--checkpoint", str(run_dir), "--step", "2", "--out", str(tmp_path / "x")]) == 2
