"""HF checkpoint formats (single/sharded safetensors, .bin, tied-only-lm_head) and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="writes reference checkpoints with transformers + torch")

import jax.numpy as jnp  # noqa: E402

from bioinstruct_jax.checkpoint.hf import CheckpointError, load_pretrained  # noqa: E402
from bioinstruct_jax.checkpoint.safetensors_io import SafetensorsFile, write_streamed  # noqa: E402
from bioinstruct_jax.model.config import LlamaConfig  # noqa: E402
from hf_fixtures import write_tiny_llama  # noqa: E402

IDS = np.array([[5, 9, 17, 33, 65, 100, 3]], np.int32)


def _ref_logits(ref):
    with torch.no_grad():
        return ref(torch.tensor(IDS, dtype=torch.long)).logits.numpy()


def _ours(path, **kw):
    model, _ = load_pretrained(path, dtype=jnp.float32, **kw)
    return np.asarray(model(jnp.asarray(IDS)))


def test_sharded_safetensors_with_index(tmp_path):
    import transformers

    ref = write_tiny_llama(tmp_path / "one", "mha_untied")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "many", max_shard_size="100KB")
    assert (tmp_path / "many" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "many").glob("model-*.safetensors"))) >= 4
    np.testing.assert_allclose(_ours(tmp_path / "many"), _ref_logits(ref), atol=1e-4)


def test_pytorch_bin_checkpoint(tmp_path):
    ref = write_tiny_llama(tmp_path / "st", "gqa_tied")
    out = tmp_path / "bin"
    out.mkdir()
    shutil.copy(tmp_path / "st" / "config.json", out / "config.json")
    torch.save(ref.state_dict(), out / "pytorch_model.bin")
    np.testing.assert_allclose(_ours(out), _ref_logits(ref), atol=1e-4)


def test_tied_checkpoint_that_stores_only_lm_head(tmp_path):
    ref = write_tiny_llama(tmp_path, "gqa_tied")
    src = SafetensorsFile(tmp_path / "model.safetensors")
    tensors = {k: np.array(src.get(k)) for k in src.keys()}
    emb = tensors.pop("model.embed_tokens.weight")
    tensors["lm_head.weight"] = emb
    del src
    write_streamed(tmp_path / "model.safetensors", [(k, v.shape, v.dtype) for k, v in tensors.items()],
                   tensors.__getitem__)
    np.testing.assert_allclose(_ours(tmp_path), _ref_logits(ref), atol=1e-4)


def test_bf16_checkpoint_reads_as_bf16(tmp_path):
    write_tiny_llama(tmp_path, "mha_untied", dtype="bfloat16")
    model, _ = load_pretrained(tmp_path, dtype=jnp.bfloat16)
    kernel = model.layers[1].mlp.down_proj.kernel[...]
    src = SafetensorsFile(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(np.asarray(kernel), src.get("model.layers.1.mlp.down_proj.weight").T)


def test_directory_without_weights(tmp_path):
    write_tiny_llama(tmp_path, "mha_untied")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights found"):
        load_pretrained(tmp_path)


def test_truncated_safetensors_names_file(tmp_path):
    write_tiny_llama(tmp_path, "mha_untied")
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_pretrained(tmp_path)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    write_tiny_llama(tmp_path, "mha_untied")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    msg = str(err.value)
    assert "'model.layers.0.mlp.down_proj.weight' has shape (64, 112), the model expects (64, 96)" in msg


def test_missing_and_unexpected_tensors(tmp_path):
    write_tiny_llama(tmp_path, "mha_untied")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.2\..*expects shape"):
        load_pretrained(tmp_path)
    cfg["num_hidden_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.1\."):
        load_pretrained(tmp_path)


def test_config_round_trip_through_transformers(tmp_path):
    import transformers

    write_tiny_llama(tmp_path, "gqa_llama3")
    ours = LlamaConfig.from_hf(tmp_path)
    assert ours.rope_scaling is not None and ours.rope_scaling.rope_type == "llama3"
    assert ours.num_key_value_heads == 1 and ours.rope_theta == 500000.0
    hf = transformers.LlamaConfig(**ours.to_hf())
    assert LlamaConfig.from_hf(hf.to_dict()) == ours


def test_inspect_cli_prints_config_and_parameter_count(tmp_path):
    ref = write_tiny_llama(tmp_path, "gqa_tied")
    out = subprocess.run([sys.executable, "-m", "bioinstruct_jax.checkpoint.describe", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert f"{sum(p.numel() for p in ref.parameters()):,}" in out
    assert "num_key_value_heads" in out
