"""Training: the pure jitted step (step.py), the loop with checkpoints and resume (loop.py), metrics and MFU
(metrics.py), NaN/Inf guard (nonfinite.py), SIGTERM handling (preemption.py) and the memory planner (plan.py).
`python -m bioinstruct_jax.train` is __main__.py."""
