"""TFDS builders for instruction sets shaped like BioInstruct (bioinstruct.py) and their shared helpers (common.py)."""
