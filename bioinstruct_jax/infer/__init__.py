"""Inference: the jitted batched decoding engine (engine.py), next-token sampling (sampling.py), the text
predictor and model loading by path (predictor.py), and the `generate` command (cli.py)."""
