"""The environment clinie starts Ray with: every Ray setting it chooses, in one table.

Ray's processes read these settings from the environment as they start (the raylet hands its own
to every worker it starts), so they are set in the environment of the process that starts Ray,
before `ray.init()` / `ray start`, and never over an operator's own value. Each setting's reason
lives beside the code it serves; this module only says which ones a start gets:

- `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` (local, cluster): serve_app/proxy_retry.py, a
  request on a lost Ingress replica sent again, refusals answered from shed hints;
- `RAY_worker_niceness` (local, cluster): serve_app/worker_priority.py, the request path not below
  the rest of the machine;
- `RAY_SERVE_ENABLE_HA_PROXY` and its companion (local, `--front-door haproxy`):
  serve_app/front_door.py;
- `RAY_SERVE_CONTROL_LOOP_INTERVAL_S`, `RAY_SERVE_LOG_TO_STDERR` (local): serve_app/ray_upkeep.py,
  cores the fast tier answers with.

The multi-node cluster (serve_app/cluster.py) keeps Ray's own upkeep: its nodes are for placement
and failover, not for the last percent of two shared cores.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Literal

from serve_app import front_door, proxy_retry, ray_upkeep, worker_priority
from serve_app.front_door import FrontDoor

Where = Literal["local", "cluster"]
"""`local`: `clinie serve` (serve_app/local.py) starting Ray in its own process; `cluster`: the
local multi-node cluster's `ray start`s (serve_app/cluster.py)."""


def settings(where: Where, door: FrontDoor = FrontDoor.PROXY) -> dict[str, str]:
    """The Ray settings a start of `where` gets (before an operator's own values)."""
    table = {**proxy_retry.RAY_ENV, **worker_priority.RAY_ENV}
    if where == "local":
        table |= front_door.ray_env(door) | ray_upkeep.RAY_ENV
    return table


def install(where: Where, door: FrontDoor = FrontDoor.PROXY, environ: MutableMapping[str, str] | None = None) -> None:
    """Set `settings(where, door)` in `environ` (this process's by default), keeping every value
    the operator set."""
    env = os.environ if environ is None else environ
    for key, value in settings(where, door).items():
        env.setdefault(key, value)
