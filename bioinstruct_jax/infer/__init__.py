"""Inference: the jitted batched decoding engine and text predictor (engine.py) and next-token sampling (sampling.py)."""
