"""Export to HF (merged LlamaForCausalLM, PEFT adapter) and PEFT import, checked against transformers + peft.

Round trip per tiny random checkpoint: load it, add LoRA, train a few SGD steps, then
  merged export -> transformers logits == ours; PEFT export -> peft on the original base == ours;
  that adapter imported back into a fresh base == ours.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

from bioinstruct_jax.checkpoint import peft as adapters
from bioinstruct_jax.checkpoint.output import ExportError
from bioinstruct_jax.export import __main__ as export_cli
from bioinstruct_jax.export import merged as export
from bioinstruct_jax.checkpoint.hf import load_pretrained
from bioinstruct_jax.checkpoint.safetensors_io import SafetensorsFile
from bioinstruct_jax.model.lora import LoraConfig, LoRAParam, apply_lora, lora_modules
from hf_fixtures import write_tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = np.array([[1, 5, 9, 33, 70, 2, 17, 100, 64, 3, 8, 127], [1, 44, 12, 90, 6, 6, 71, 30, 2, 55, 19, 4]])

# mha_untied: every projection and the LM head (PEFT target_modules as a name list);
# gqa_tied: some modules of some layers only (PEFT target_modules as an exact-name regex).
CASES = {
    "mha_untied": LoraConfig(r=4, alpha=8.0, dropout=0.0, target_regex=r"(layers/\d+/(self_attn|mlp)/\w+_proj)|lm_head"),
    "gqa_tied": LoraConfig(r=3, alpha=5.0, dropout=0.0, target_regex=r"layers/0/self_attn/(q|v)_proj|layers/1/mlp/down_proj",
                           rslora=True),
}


def torch_logits(model, ids=IDS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def ours(model, ids=IDS) -> np.ndarray:
    return np.asarray(model(jnp.asarray(ids)))


def train_lora(model, steps: int = 5, lr: float = 0.2) -> list[float]:
    """A few plain SGD steps on the LoRA weights only (next-token loss on IDS)."""
    ids = jnp.asarray(IDS)
    opt = nnx.Optimizer(model, optax.sgd(lr), wrt=LoRAParam)

    def loss_fn(m):
        logits = m(ids[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, LoRAParam))(m)
        o.update(m, grads)
        return loss

    return [float(step(model, opt)) for _ in range(steps)]


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request, tmp_path_factory):
    """(variant, base dir, trained model with LoRA, its LoraConfig, its logits, base logits)."""
    variant = request.param
    base_dir = tmp_path_factory.mktemp(variant) / "base"
    write_tiny_llama(base_dir, variant)
    model, _ = load_pretrained(base_dir, dtype="float32")
    base_logits = ours(model)
    cfg = CASES[variant]
    apply_lora(model, cfg, nnx.Rngs(1))
    losses = train_lora(model)
    assert losses[-1] < losses[0]
    logits = ours(model)
    assert np.abs(logits - base_logits).max() > 1e-2  # the adapter really changes the model
    return variant, base_dir, model, cfg, logits


def test_merged_export_loads_in_transformers_with_equal_logits(trained, tmp_path):
    variant, _, model, _, logits = trained
    out = export.export_merged(model, tmp_path / "merged", max_shard_bytes=100_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all((out / s).is_file() for s in shards)
    for s in shards:  # every shard within the limit (a tensor larger than it would be alone)
        f = SafetensorsFile(out / s)
        sizes = [int(np.prod(f.shape(k))) * 4 for k in f.keys()]
        assert sum(sizes) <= 100_000 or len(sizes) == 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["dtype"] == "float32"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.tie_word_embeddings == (variant == "gqa_tied")
    np.testing.assert_allclose(torch_logits(hf), logits, atol=1e-4, rtol=0)
    assert not any(m.merged for _, m in lora_modules(model))  # export leaves the model as it was


def test_peft_export_loads_in_peft_and_imports_back(trained, tmp_path):
    variant, base_dir, model, cfg, logits = trained
    out = adapters.write_peft_adapter(model, cfg, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    acfg = json.loads((out / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and acfg["task_type"] == "CAUSAL_LM"
    assert (acfg["r"], acfg["lora_alpha"], acfg["use_rslora"]) == (cfg.r, cfg.alpha, cfg.rslora)
    f = SafetensorsFile(out / "adapter_model.safetensors")
    q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert f.shape(q_a) == (cfg.r, 64)
    assert f.shape(q_a.replace("lora_A", "lora_B")) == (64, cfg.r)
    if variant == "mha_untied":
        assert sorted(acfg["target_modules"]) == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"])
        assert f.shape("base_model.model.lm_head.lora_B.weight") == (128, cfg.r)
    else:
        assert isinstance(acfg["target_modules"], str) and len(f.keys()) == 6

    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    peft_model = peft.PeftModel.from_pretrained(base, out).eval()
    n_lora = sum(1 for n, _ in peft_model.named_parameters() if "lora_A" in n)
    assert n_lora == len(lora_modules(model))
    np.testing.assert_allclose(torch_logits(peft_model), logits, atol=1e-4, rtol=0)

    fresh, _ = load_pretrained(base_dir, dtype="float32")
    loaded_cfg = adapters.load_peft_adapter(fresh, out)
    assert (loaded_cfg.r, loaded_cfg.scale) == (cfg.r, cfg.scale)
    assert sorted(p for p, _ in lora_modules(fresh)) == sorted(p for p, _ in lora_modules(model))
    np.testing.assert_allclose(ours(fresh), logits, atol=1e-5, rtol=0)


def test_cli_base_plus_adapter_merges(trained, tmp_path):
    variant, base_dir, model, cfg, logits = trained
    adapter = adapters.write_peft_adapter(model, cfg, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    out = tmp_path / "out"
    assert export_cli.main(["--base", str(base_dir), "--adapter", str(adapter), "--out", str(out),
                        "--format", "both"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    np.testing.assert_allclose(torch_logits(hf), logits, atol=1e-4, rtol=0)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    np.testing.assert_allclose(torch_logits(peft.PeftModel.from_pretrained(base, out / "peft").eval()), logits,
                               atol=1e-4, rtol=0)


def test_bf16_export_keeps_dtype_and_loads(trained, tmp_path):
    variant, _, model, _, logits = trained
    out = export.export_merged(model, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    f = SafetensorsFile(out / "model.safetensors")
    assert {f.dtype(k) for k in f.keys()} == {np.dtype(ml_dtypes.bfloat16)}
    # The written q_proj is exactly (W + scale * A @ B)^T rounded once to bf16.
    mod = dict(lora_modules(model))[("layers", 0, "self_attn", "q_proj")]
    want = (np.asarray(mod.kernel[...]) + mod.scale * np.asarray(mod.lora_a[...]) @ np.asarray(mod.lora_b[...])).T
    got = f.get("model.layers.0.self_attn.q_proj.weight").astype(np.float32)
    np.testing.assert_allclose(got, want.astype(ml_dtypes.bfloat16).astype(np.float32), atol=2e-7, rtol=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    assert np.abs(torch_logits(hf) - logits).max() < 0.05 * np.abs(logits).max() + 0.05


def test_independent_peft_adapter_imports_with_equal_logits(tmp_path):
    """An adapter made by peft itself (rsLoRA, random B) gives our model peft's logits."""
    base_dir = tmp_path / "base"
    write_tiny_llama(base_dir, "gqa_tied", seed=3)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    pcfg = peft.LoraConfig(r=6, lora_alpha=10, target_modules=["k_proj", "o_proj", "up_proj"], lora_dropout=0.1,
                           use_rslora=True, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(base, pcfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    pm.eval()
    want = torch_logits(pm)
    pm.save_pretrained(tmp_path / "adapter")
    model, _ = load_pretrained(base_dir, dtype="float32")
    cfg = adapters.load_peft_adapter(model, tmp_path / "adapter")
    assert cfg.targets == ("k_proj", "o_proj", "up_proj") and cfg.rslora and cfg.dropout == 0.1
    model.eval()
    np.testing.assert_allclose(ours(model), want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# Errors


def test_existing_output_directory_is_refused_unless_overwrite(trained, tmp_path):
    _, _, model, cfg, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.safetensors").write_text("x")
    with pytest.raises(ExportError, match=r"already exists.*--overwrite"):
        export.export_merged(model, out)
    with pytest.raises(ExportError, match="already exists"):
        adapters.write_peft_adapter(model, cfg, out)
    assert sorted(p.name for p in out.iterdir()) == ["stale.safetensors"]  # untouched
    export.export_merged(model, out, overwrite=True)
    assert not (out / "stale.safetensors").exists() and (out / "config.json").is_file()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_peft_export_without_lora_state_fails(tmp_path):
    base_dir = tmp_path / "base"
    write_tiny_llama(base_dir, "mha_untied")
    model, _ = load_pretrained(base_dir, dtype="float32")
    with pytest.raises(ExportError, match="no LoRA adapters"):
        adapters.write_peft_adapter(model, LoraConfig(), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    rc = export_cli.main(["--base", str(base_dir), "--out", str(tmp_path / "p"), "--format", "peft"])
    assert rc == 2 and not (tmp_path / "p").exists()


def test_checkpoint_without_lora_state_fails_clearly(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "7" / "meta").mkdir(parents=True)
    rc = export_cli.main(["--checkpoint", str(run), "--out", str(tmp_path / "o"), "--format", "peft"])
    assert rc == 2 and "holds no LoRA state" in capsys.readouterr().err
    rc = export_cli.main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no training checkpoint" in capsys.readouterr().err


def test_import_into_a_different_base_names_tensor_and_shapes(trained, tmp_path):
    """Both variants: mha_untied adapts k_proj in every layer, gqa_tied v_proj in layer 0 and
    down_proj in layer 1 only; a base with half the key/value heads is refused naming the tensor."""
    variant, base_dir, model, cfg, _ = trained
    kv_heads = {"mha_untied": 4, "gqa_tied": 2}[variant]
    kv_rows, half = 16 * kv_heads, 16 * kv_heads // 2  # head_dim 16
    proj = {"mha_untied": r"layers\.\d+\.self_attn\.k_proj", "gqa_tied": r"layers\.0\.self_attn\.v_proj"}[variant]
    adapter = adapters.write_peft_adapter(model, cfg, tmp_path / "adapter")  # no base path: shapes decide
    other_dir = tmp_path / "other"
    write_tiny_llama(other_dir, variant, num_key_value_heads=kv_heads // 2)  # k/v_proj rows halved
    other, _ = load_pretrained(other_dir, dtype="float32")
    with pytest.raises(ExportError,
                       match=rf"{proj}\.lora_B\.weight.*\({kv_rows}, {cfg.r}\).*\({half}, {cfg.r}\)"):
        adapters.load_peft_adapter(other, adapter)
    assert not lora_modules(other)  # nothing applied on failure
    deeper_dir = tmp_path / "one_layer"
    write_tiny_llama(deeper_dir, variant, num_hidden_layers=1)
    shallow, _ = load_pretrained(deeper_dir, dtype="float32")
    with pytest.raises(ExportError, match=r"model\.layers\.1\..*does not have"):
        adapters.load_peft_adapter(shallow, adapter)
    assert not lora_modules(shallow)
    # base_model_name_or_path pointing at a local base of another architecture
    named = adapters.write_peft_adapter(model, cfg, tmp_path / "named", base_model_name_or_path=str(other_dir))
    fresh, _ = load_pretrained(base_dir, dtype="float32")
    with pytest.raises(ExportError, match=f"num_key_value_heads={kv_heads // 2}, this model has {kv_heads}"):
        adapters.load_peft_adapter(fresh, named)



def test_sharded_model_exports_the_same_bytes(trained, tmp_path):
    """A model sharded over 8 devices (fsdp x tensor) writes exactly the files of the unsharded one."""
    from bioinstruct_jax.parallel import sharding as parallel

    variant, base_dir, model, cfg, logits = trained
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (virtual) devices; tests/conftest.py sets them")
    plain = export.export_merged(model, tmp_path / "plain", max_shard_bytes=150_000)
    adapter = adapters.write_peft_adapter(model, cfg, tmp_path / "adapter_plain")
    sharded_model, _ = load_pretrained(base_dir, dtype="float32")
    adapters.load_peft_adapter(sharded_model, adapter)
    sharded_model = parallel.shard_model(sharded_model, parallel.make_mesh((1, 4, 2), devices=jax.devices()[:8]))
    kernel = dict(lora_modules(sharded_model))[("layers", 0, "self_attn", "q_proj")].kernel[...]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    sharded = export.export_merged(sharded_model, tmp_path / "sharded", max_shard_bytes=150_000)
    files = sorted(p.name for p in plain.iterdir())
    assert files == sorted(p.name for p in sharded.iterdir())
    for name in files:
        assert (plain / name).read_bytes() == (sharded / name).read_bytes(), name
    again = adapters.write_peft_adapter(sharded_model, cfg, tmp_path / "adapter_sharded")
    assert (again / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
