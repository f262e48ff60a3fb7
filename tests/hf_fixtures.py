"""Tiny random Hugging Face LLaMA checkpoints written by transformers itself (no download)."""

from __future__ import annotations

import pathlib
from typing import Any

TINY_VARIANTS: dict[str, dict[str, Any]] = {
    # LLaMA 2 style: multi-head attention, separate output layer.
    "mha_untied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    # Grouped-query attention with tied embeddings.
    "gqa_tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    # LLaMA 3 style: GQA, large rope_theta and the llama3 rope scaling rule.
    "gqa_llama3": dict(
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ),
}


def write_tiny_llama(directory: pathlib.Path, variant: str = "mha_untied", *, seed: int = 0,
                     dtype: str = "float32", vocab_size: int = 128, **overrides: Any):
    """Write a random `LlamaForCausalLM` with `save_pretrained`; returns the torch model (eval mode)."""
    import torch
    import transformers

    kwargs = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
    kwargs.update(TINY_VARIANTS[variant])
    kwargs.update(overrides)
    config = transformers.LlamaConfig(**kwargs)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    with torch.no_grad():  # random norms so a wrong norm path cannot hide behind ones
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model
