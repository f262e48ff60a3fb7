"""Devices: the mesh and its one logical-axis rules table (sharding.py), multi-process start-up (distributed.py),
and the platform guard that keeps libtpu away from machines without a TPU (platforms.py)."""
