"""Which process on this machine is what (Ray's workers and daemons, this benchmark), and how much
CPU each role used over a stretch of time: where the cores go under load."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import psutil

_RAY_WORKER = re.compile(r"^ray::(\w+)")
CLIENT = "load_client"  # this process: the benchmark's clients and its replica poller


def ray_process_group(proc: psutil.Process) -> str | None:
    """What a Ray process is (None: not Ray's): `ServeReplica:APP:DEPLOYMENT`, `ProxyActor`,
    `ServeController`, a daemon's name (`raylet`, `gcs_server`, ...)."""
    try:
        name, cmd = proc.name(), " ".join(proc.cmdline()[:3])
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    title = cmd if cmd.startswith("ray::") else name
    m = _RAY_WORKER.match(title)
    if m:
        rest = title.split("ray::", 1)[1]
        return rest.split(".")[0].split(" ")[0] if m.group(1) == "ServeReplica" else m.group(1)
    # haproxy: the `haproxy` front door's forwarder (serve_app/front_door.py), started by Ray
    for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor", "haproxy"):
        if daemon in name or f"/{daemon}" in cmd:
            return daemon
    return None


class CpuMeter:
    """CPU seconds per process, from snapshots: `cores(a, b)` is each role's average number of busy
    cores between two snapshots. Roles: Ray's groups (a replica's group names its deployment), this
    benchmark (`load_client`), and `machine` (every core busy, whoever it was).

    Counted process by process: one that starts between two snapshots counts from zero, one that
    exits takes the CPU it used since the first snapshot with it (a replica stopped by a downscale;
    its role then reads low, never negative, and the others are unaffected). Only this machine's
    processes are seen."""

    def __init__(self) -> None:
        self._me = os.getpid()

    def snapshot(self) -> dict[str, Any]:
        procs: dict[int, tuple[str, float]] = {}
        for proc in psutil.process_iter():
            role = CLIENT if proc.pid == self._me else ray_process_group(proc)
            if role is None:
                continue
            try:
                t = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            procs[proc.pid] = (role, t.user + t.system)
        total = psutil.cpu_times()
        machine = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        return {"t": time.monotonic(), "machine": machine, "procs": procs}

    @staticmethod
    def cores(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        """Average busy cores per role between two snapshots, largest first (roles under 0.005
        cores left out)."""
        wall = max(after["t"] - before["t"], 1e-9)
        used: dict[str, float] = {"machine": after["machine"] - before["machine"]}
        for pid, (role, cpu) in after["procs"].items():
            prev = before["procs"].get(pid)
            # a pid reused by another role is a new process
            since = cpu - prev[1] if prev is not None and prev[0] == role else cpu
            used[role] = used.get(role, 0.0) + max(since, 0.0)
        out = {role: round(cpu / wall, 3) for role, cpu in used.items()}
        return dict(sorted(((r, c) for r, c in out.items() if c >= 0.005), key=lambda rc: -rc[1]))
