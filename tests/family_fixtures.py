"""Tiny random Qwen2 and Mistral checkpoints written by transformers itself (no download).

Norms and the Qwen2 q/k/v biases are drawn at random (transformers starts them at one and zero),
so a dropped bias or a wrong norm path changes the logits.
"""

from __future__ import annotations

import pathlib
from typing import Any

# The families beside LLaMA, each as (transformers config class, model class, tiny config).
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    # q/k/v biases and tied embeddings, as the small Qwen2.5 checkpoints.
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, num_key_value_heads=2)),
    # A sliding window of 4 tokens: shorter than every test sequence, so a dropped window shows.
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(tie_word_embeddings=False, num_key_value_heads=2,
                                                            sliding_window=4, head_dim=16)),
}


def write_tiny_family(directory: pathlib.Path, family: str, *, seed: int = 0, vocab_size: int = 128,
                      initializer_range: float = 0.02, **overrides: Any):
    """Write a random checkpoint of `family` with `save_pretrained`; returns the torch model (eval mode, f32)."""
    import torch
    import transformers

    config_class, model_class, extra = FAMILIES[family]
    kwargs = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1,
                  eos_token_id=2, initializer_range=initializer_range)
    kwargs.update(extra)
    kwargs.update(overrides)
    config = getattr(transformers, config_class)(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model
