"""LLaMA 1/2/3 in Flax NNX (llama.py) and the hand-written LoRA adapters (lora.py)."""
