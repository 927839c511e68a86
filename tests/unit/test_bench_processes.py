"""The load benchmark's CPU accounting: cores per role between two snapshots of this machine."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from benchmarks.processes import CLIENT, CpuMeter, ray_process_group


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_this_process_counts_as_the_client_and_the_machine_includes_it():
    meter = CpuMeter()
    before = meter.snapshot()
    t0 = time.monotonic()
    _burn(0.4)
    after = meter.snapshot()
    wall = time.monotonic() - t0
    cores = meter.cores(before, after)
    # 0.4 s of CPU in at most `wall` seconds: at least 0.4 / wall cores, give or take the sampling
    assert cores[CLIENT] >= 0.9 * 0.4 / wall
    assert cores["machine"] >= 0.9 * cores[CLIENT]
    assert list(cores.values()) == sorted(cores.values(), reverse=True)  # largest first


def test_cores_from_given_snapshots_leave_out_idle_roles_and_count_new_ones_from_zero():
    fast = "ServeReplica:clinie:FastTier"
    before = {"t": 10.0, "machine": 8.0, "procs": {11: (fast, 5.0), 12: ("raylet", 1.0)}}
    after = {"t": 12.0, "machine": 12.0, "procs": {11: (fast, 7.0), 12: ("raylet", 1.001), 13: ("ProxyActor", 0.5)}}
    assert CpuMeter.cores(before, after) == {"machine": 2.0, fast: 1.0, "ProxyActor": 0.25}


def test_a_process_that_exits_takes_only_its_own_cpu_with_it():
    # a downscale: replica 11 (much CPU before) exits; replica 14 starts and works; pid 12 is reused
    fast = "ServeReplica:clinie:FastTier"
    before = {"t": 0.0, "machine": 100.0, "procs": {11: (fast, 90.0), 12: ("raylet", 3.0), 13: (fast, 2.0)}}
    after = {"t": 10.0, "machine": 110.0, "procs": {13: (fast, 6.0), 14: (fast, 3.0), 12: (fast, 1.0)}}
    assert CpuMeter.cores(before, after) == {"machine": 1.0, fast: 0.8}


def test_a_process_that_is_not_rays_has_no_group():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert ray_process_group(psutil.Process(child.pid)) is None
    finally:
        child.kill()
        child.wait()


def test_cpu_info_names_the_model_and_only_known_vector_flags():
    from pathlib import Path

    from benchmarks.report import _VECTOR_FLAGS, cpu_info

    info = cpu_info()
    if not Path("/proc/cpuinfo").exists():
        assert info == {}
        return
    flags = Path("/proc/cpuinfo").read_text().split()
    assert set(info["vector_flags"]) <= set(_VECTOR_FLAGS)
    assert all(f in flags for f in info["vector_flags"])
    assert ("avx2" in flags) == ("avx2" in info["vector_flags"])
