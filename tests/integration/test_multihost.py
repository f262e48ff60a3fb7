"""Two processes x two CPU devices on 127.0.0.1 (gloo collectives) give single-process results."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from bioinstruct_jax.parallel.distributed import (detect_environment, host_batch_rows, host_batch_slice, refuse_multi_process,
                                         tpu_chips_on_host)

TESTS = pathlib.Path(__file__).resolve().parents[1]  # the helper modules live here
sys.path.insert(0, str(TESTS))
import multihost_worker  # noqa: E402

TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip("this jax build has no CPU collectives option (jax_cpu_collectives_implementation)")
    port = _free_port()
    env_base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "TPU_", "SLURM_"))}
    env_base["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env_base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    procs = []
    for pid in range(2):
        env = dict(env_base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, str(TESTS / "multihost_worker.py"), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"multi-process run did not finish in {TIMEOUT_S}s")
    for pid, (p, out) in enumerate(zip(procs, outputs)):
        if p.returncode and "gloo" in out.lower() and ("not available" in out.lower() or "unsupported" in out.lower()):
            pytest.skip(f"this jax build has no gloo CPU collectives: {out.strip().splitlines()[-1]}")
        assert p.returncode == 0, f"process {pid} failed:\n{out[-4000:]}"

    # the single-process reference on one device
    with jax.default_device(jax.devices()[0]):
        ref_logits, ref_grads = multihost_worker.forward_and_grads(multihost_worker.make_model(),
                                                                   multihost_worker.global_batch())
    for pid in range(2):
        got = np.load(tmp_path / f"result_{pid}.npz")
        assert list(got["rows"]) == [2 * pid, 2 * pid + 2]  # each host fed only its own rows
        np.testing.assert_allclose(got["logits"], np.asarray(ref_logits), atol=1e-5, rtol=0)
        assert len(ref_grads) == 2 * 4 * 2
        for name, ref in ref_grads.items():
            np.testing.assert_allclose(got[f"grad:{name}"], np.asarray(ref), atol=1e-5, rtol=0, err_msg=name)


def test_environment_detection_and_host_slices():
    assert detect_environment({}, tpu_chips=0) == (None, {})
    kind, kw = detect_environment({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                                   "JAX_PROCESS_ID": "3"})
    assert kind == "coordinator" and kw == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    assert detect_environment({"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"})[0] is None
    with pytest.raises(ValueError, match="JAX_PROCESS_ID=5 is outside"):
        detect_environment({"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "5"})
    assert detect_environment({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4", "TPU_WORKER_ID": "0"})[0] == "tpu"
    assert detect_environment({"TPU_WORKER_HOSTNAMES": "localhost"}, tpu_chips=0)[0] is None
    # any Cloud TPU VM (chips on the PCI bus) initialises, so that JAX reads a slice from the
    # metadata server; the explicit coordinator variables still win, and JAX_PLATFORMS=cpu opts out
    assert detect_environment({}, tpu_chips=4) == ("tpu", {})
    assert detect_environment({"JAX_PLATFORMS": "cpu"}, tpu_chips=4) == (None, {})
    assert detect_environment({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
                              tpu_chips=4)[0] == "coordinator"
    assert detect_environment({"MEGASCALE_COORDINATOR_ADDRESS": "m:8080"})[0] == "tpu"
    assert detect_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"})[0] == "slurm"
    assert detect_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, tpu_chips=0)[0] is None
    assert host_batch_slice(32, process_index=1, process_count=4) == slice(8, 16)
    assert host_batch_slice(32) == slice(0, 32)
    with pytest.raises(ValueError, match="global batch size 30 is not divisible by the number of hosts \\(4\\)"):
        host_batch_slice(30, process_index=0, process_count=4)


def test_tpu_chips_are_read_from_the_pci_bus(tmp_path):
    # two v4 chips, a gVNIC network card (Google's vendor id, not a TPU) and an Intel device
    for name, vendor, device in (("0000:00:04.0", "0x1ae0", "0x005e"), ("0000:00:05.0", "0x1ae0", "0x005e"),
                                 ("0000:00:06.0", "0x1ae0", "0x0042"), ("0000:00:07.0", "0x8086", "0x005e")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "device").write_text(device + "\n")
    assert tpu_chips_on_host(str(tmp_path)) == 2
    assert tpu_chips_on_host(str(tmp_path / "absent")) == 0


def test_one_process_tools_refuse_a_multi_process_launch():
    refuse_multi_process("bioinstruct_jax.eval", {})
    with pytest.raises(ValueError, match=r"bioinstruct_jax.eval runs as a single process, but this is process 1 of 2"):
        refuse_multi_process("bioinstruct_jax.eval", {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                                      "JAX_PROCESS_ID": "1"})
    with pytest.raises(ValueError, match="multi-host tpu launch"):
        refuse_multi_process("bioinstruct_jax.infer.engine", {"TPU_WORKER_HOSTNAMES": "a,b"})


def test_host_batch_rows_on_one_process():
    from bioinstruct_jax.parallel import sharding as parallel

    mesh = parallel.make_mesh((1, 4, 2), devices=jax.devices()[:8])
    assert host_batch_rows(mesh, 8) == list(range(8))
    assert host_batch_rows(mesh, 8, grad_accum=2) == list(range(8))
    with pytest.raises(ValueError, match="not divisible by optim.grad_accum=3"):
        host_batch_rows(mesh, 8, grad_accum=3)
