"""`python -m bioinstruct_jax.data.generate`: self-instruct data generation (the command; the code is in
data/self_instruct/)."""

from bioinstruct_jax.data.self_instruct.cli import run_command

if __name__ == "__main__":
    run_command()
