"""A training run's model signature names a family's switches only where they differ from LLaMA,
so a LLaMA checkpoint written before the switches existed still resumes, and a Qwen2 / Mistral
checkpoint reads back as its own family."""

from __future__ import annotations

from bioinstruct_jax.checkpoint import factory
from bioinstruct_jax.config import RunConfig
from bioinstruct_jax.model.config import LlamaConfig

# The architecture part of a LLaMA `tiny` run's signature as runs stored it before model families.
OLD_TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": None, "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "rope_freq_factors": None,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": [2], "pad_token_id": None}


def test_llama_signature_is_unchanged_and_families_read_back():
    cfg = RunConfig()
    assert factory.model_signature(cfg, LlamaConfig.preset("tiny"))["architecture"] == OLD_TINY
    assert factory.llama_config_from_dict(OLD_TINY) == LlamaConfig.preset("tiny")
    for name in ("tiny-qwen2", "tiny-mistral"):
        config = LlamaConfig.preset(name)
        stored = factory.model_signature(cfg, config)["architecture"]
        assert stored["model_type"] == config.model_type
        assert factory.llama_config_from_dict(stored) == config
