"""Evaluation: tasks, answer parsing, metrics, GPT-4 judge, runner and report (`python -m bioinstruct_jax.eval`)."""
