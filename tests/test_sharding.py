"""Many devices and hosts: the sharded step equals the single-device step.

- 8 simulated CPU devices (``--xla_force_host_platform_device_count=8``, in a subprocess so
  that the rest of the suite keeps one device; ``tests/sharding_worker.py`` says what each
  check does): data parallel for the table, network and global mixers with BatchNorm state,
  the table sharded along its rows, parameters sharded along a second mesh axis (FSDP).
- 2 processes on this machine (``jax.distributed.initialize`` with a coordinator on
  localhost, 2 CPU devices each, JAX's own CPU collectives): ``examples/multihost.py``
  gives the single process's numbers.

Both launches start together (module fixture) and run side by side. The programs are tiny
and their compilation dominates, so the subprocesses compile without XLA's backend
optimisations (``--xla_backend_optimization_level=0``: the same operations, faster to
compile).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import F32, load_example

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "sharding_worker.py"
MULTIHOST = ROOT / "examples" / "multihost.py"
CHECKS = (
    "data_parallel_table",
    "data_parallel_network",
    "data_parallel_global",
    "sharded_table",
    "fsdp",
)
TIMEOUT = 300


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")) if p
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Starts the 8-device worker and the two processes of the multi-host run at once."""
    out = tmp_path_factory.mktemp("multihost")
    worker = subprocess.Popen(
        [sys.executable, str(WORKER)],
        env=_env(8),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    port = _free_port()
    hosts = [
        subprocess.Popen(
            [
                sys.executable,
                str(MULTIHOST),
                "--num-processes=2",
                f"--process-id={i}",
                f"--coordinator=localhost:{port}",
                f"--out={out / f'process{i}.npz'}",
            ],
            env=_env(2),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    yield {"worker": worker, "hosts": hosts, "out": out, "results": {}}
    for proc in (worker, *hosts):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode in (0, 1), f"rc {proc.returncode}\n{stderr[-4000:]}"
    return stdout, stderr


@pytest.fixture(scope="module")
def eight_devices(launched):
    """The worker's JSON: per check its largest differences and whether it passed."""
    stdout, stderr = _finish(launched["worker"])
    lines = stdout.strip().splitlines()
    assert lines, stderr[-4000:]
    return json.loads(lines[-1])


@pytest.mark.parametrize("check", CHECKS)
def test_eight_devices_equal_one(eight_devices, check):
    record = eight_devices[check]
    assert record["shardings_kept"], f"{check}: an output lost the sharding it was given"
    # The worker compares with helpers.F32 (rtol 1e-5, atol 1e-6); the share of that
    # tolerance used is at most 1 where it passes.
    assert record["ok"] and record["tolerance_used"] <= 1.0, record
    assert record["max_abs"] < 10 * F32["atol"], record


def test_two_processes_equal_one_process(launched, tmp_path):
    for proc in launched["hosts"]:
        stdout, stderr = _finish(proc)
        assert proc.returncode == 0, stderr[-4000:]
        assert "of 2, mesh of 4 devices" in stdout, stdout
    example = load_example(MULTIHOST)
    try:
        single = example.main(["--out", str(tmp_path / "single.npz")])
    finally:
        sys.modules.pop(example.__name__, None)
    assert single["table"].shape == (example.NUM_EXAMPLES, 2)
    for i in range(2):
        with np.load(launched["out"] / f"process{i}.npz") as got:
            assert set(got.files) == set(single)
            for name, value in single.items():
                np.testing.assert_allclose(got[name], value, **F32, err_msg=name)
    # The table moved: the comparison is not one of two untouched initial states.
    assert float(np.abs(single["table"] - single["table"][0]).max()) > 1e-3
