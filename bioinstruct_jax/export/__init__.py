"""Export of a training run to Hugging Face format: a merged model or a PEFT adapter. `python -m bioinstruct_jax.export`
is __main__.py."""
