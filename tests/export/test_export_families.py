"""Qwen2 and Mistral exports, checked against transformers and peft: the export command's merged
folder loads as the family's own class with the same logits, and its PEFT adapter loads in peft on
the original base with the same logits. GGUF export refuses a family llama.cpp's `llama` cannot hold."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bioinstruct_jax.checkpoint import peft as adapters
from bioinstruct_jax.checkpoint.hf import load_pretrained
from bioinstruct_jax.checkpoint.output import ExportError
from bioinstruct_jax.export import __main__ as export_cli
from bioinstruct_jax.export.gguf_export import export_gguf
from bioinstruct_jax.model.lora import LoraConfig, LoRAParam, apply_lora
from family_fixtures import FAMILIES, write_tiny_family

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = np.array([[1, 5, 9, 33, 70, 2, 17, 100, 64, 3, 8, 127], [1, 44, 12, 90, 6, 6, 71, 30, 2, 55, 19, 4]])
# Every attention projection (Qwen2's biased q/k/v among them) and one MLP projection.
LORA = LoraConfig(r=4, alpha=8.0, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.float().numpy()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def adapted(request, tmp_path_factory):
    """(family, base folder, model with a non-zero LoRA adapter, its logits)."""
    family = request.param
    base_dir = tmp_path_factory.mktemp(family) / "base"
    write_tiny_family(base_dir, family)
    model, _ = load_pretrained(base_dir, dtype="float32")
    base_logits = np.asarray(model(jnp.asarray(IDS)))
    apply_lora(model, LORA, nnx.Rngs(1))
    for i, (_, var) in enumerate(nnx.to_flat_state(nnx.state(model, LoRAParam))):
        var.set_value(0.2 * jax.random.normal(jax.random.key(i), var.shape))
    logits = np.asarray(model(jnp.asarray(IDS)))
    assert np.abs(logits - base_logits).max() > 1e-2  # the adapter really changes the model
    return family, base_dir, model, logits


def test_export_command_writes_family_folder_and_peft_adapter(adapted, tmp_path):
    family, base_dir, model, logits = adapted
    adapter = adapters.write_peft_adapter(model, LORA, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    out = tmp_path / "out"
    assert export_cli.main(["--base", str(base_dir), "--adapter", str(adapter), "--out", str(out),
                            "--format", "both"]) == 0
    config = json.loads((out / "merged" / "config.json").read_text())
    assert config["model_type"] == family and config["architectures"] == [FAMILIES[family][1]]
    merged = transformers.AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert type(merged).__name__ == FAMILIES[family][1]
    np.testing.assert_allclose(torch_logits(merged), logits, atol=1e-4, rtol=0)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with_adapter = peft.PeftModel.from_pretrained(base, out / "peft").eval()
    assert sum(1 for n, _ in with_adapter.named_parameters() if "lora_A" in n) == 5 * 2
    np.testing.assert_allclose(torch_logits(with_adapter), logits, atol=1e-4, rtol=0)


def test_gguf_export_refuses_a_family_outside_llama(adapted, tmp_path):
    family, _, model, _ = adapted
    with pytest.raises(ExportError, match=f"this is a {family} model"):
        export_gguf(model, tmp_path / "gguf", tokenizer=object())
    assert not (tmp_path / "gguf").exists()
