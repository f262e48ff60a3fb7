"""Keep libtpu out of the way on machines without a TPU (run once, when the package is imported).

The `test` and `plan` extras install libtpu so the planner can compile for TPU slices ahead of
time (`plan --tpu-aot`, which reaches libtpu through `jax.experimental.topologies`, whatever the
platforms). JAX, though, also tries to start a TPU backend from it in every process, and on a
machine without a TPU that prints libtpu warnings (INVALID_ARGUMENT, lockfile messages) that read
like errors. So when JAX_PLATFORMS is unset, libtpu is installed and no TPU chip is attached, the
default becomes the platforms that can exist here: the installed GPU plugins, then `cpu`.

A TPU VM is left alone: a TPU is recognised by /dev/accel* or /dev/vfio devices, the TPU
environment variables of Cloud TPU images, or a Google PCI device that JAX's own table lists as
a TPU chip. A JAX_PLATFORMS the user set (even empty) is always kept.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pathlib
import pkgutil
import sys

TPU_ENV_VARS = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_NAME_ON_VM")
_GOOGLE_PCI_VENDOR = "0x1ae0"


def _google_pci_devices() -> list[str]:
    ids = []
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if pathlib.Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR:
                ids.append((pathlib.Path(vendor).parent / "device").read_text().strip())
        except OSError:
            continue
    return ids


def tpu_attached() -> bool:
    """Whether this machine has a TPU (cheap checks first; JAX's chip table only on Google hardware)."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or any(os.environ.get(v) for v in TPU_ENV_VARS):
        return True
    google = _google_pci_devices()
    if not google:
        return False
    try:  # JAX's own list of TPU PCI device ids (a private module: on any doubt, assume a TPU)
        from jax._src import hardware_utils

        return any(d in hardware_utils._TPU_PCI_DEVICE_IDS for d in google)
    except Exception:  # noqa: BLE001
        return True


def local_platforms() -> list[str]:
    """The JAX platforms this machine can offer without a TPU: installed GPU plugins, then cpu."""
    platforms = []
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        for module in pkgutil.iter_modules(spec.submodule_search_locations):
            if module.name.startswith("xla_cuda") and "cuda" not in platforms:
                platforms.append("cuda")
            elif module.name.startswith("xla_rocm") and "rocm" not in platforms:
                platforms.append("rocm")
    return platforms + ["cpu"]


def keep_libtpu_away() -> str | None:
    """Set the default JAX platforms when libtpu is installed but no TPU is attached; returns the
    value set, or None when nothing was changed."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None or tpu_attached():
        return None
    value = ",".join(local_platforms())
    os.environ["JAX_PLATFORMS"] = value
    if "jax" in sys.modules:  # imported before us: its config already read the environment
        sys.modules["jax"].config.update("jax_platforms", value)
    return value
