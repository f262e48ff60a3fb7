"""Export of a training run to Hugging Face format: a merged model (merged.py), what to restore and which writers
to run (formats.py; the PEFT adapter writer is checkpoint/peft.py). `python -m bioinstruct_jax.export` is __main__.py."""
