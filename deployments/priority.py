"""A model replica's CPU priority: where the tiers share cores with the request path (Ray's proxy,
the Ingress) on one small node, their work yields to it (`model_nice` in the application config).
"""

from __future__ import annotations

import os
from pathlib import Path


def lower_priority(by: int) -> None:
    """Raise the nice value of every thread of this process by `by`, up to 19. Linux keeps one per
    thread, and threads and processes started later inherit their starter's: so the replica's Ray
    threads that exist already, its engine's threads and any engine process it starts all yield.
    A no-op for `by` <= 0, and for threads the OS does not let it change."""
    if by <= 0:
        return
    tasks = Path("/proc/self/task")
    ids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in ids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
        except (OSError, AttributeError):
            pass  # a thread that has ended meanwhile, or no such call on this OS
