"""Every file format a model or run lives in: HF safetensors folders, GGUF files, Orbax training runs, PEFT adapters;
the model factory and the one restore path (restore.py)."""
