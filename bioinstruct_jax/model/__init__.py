"""The decoder in Flax NNX and its model families: shared layers (`layers.py`, `rope.py`,
`attention.py`), the config (`config.py`), the model (`decoder.py`), one module per family
(`llama.py`, `qwen2.py`, `mistral.py`) listed in one table (`families.py`), the hand-written LoRA
adapters (`lora.py`) and the chunked LM loss (`lm_loss.py`)."""
