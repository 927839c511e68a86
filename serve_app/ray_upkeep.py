"""Ray's own upkeep on the machine `clinie serve` starts Ray on: how often the Serve controller runs
its loop, and whether Serve's log lines cross the machine twice.

On a node where the model replicas share the cores with everything else (the local config: two
cores), every core Ray's housekeeping takes is a core the fast tier does not answer with. Two
costs of Ray's defaults, measured under 8 closed-loop clients at full capacity (README "Serving"):

- The Serve controller runs its control loop every 0.1 s, busy or idle (0.047 of the 2 cores,
  the GCS 0.026 with it). Every 0.5 s took the controller to 0.027 and the GCS to 0.011. What it
  costs: the controller notices changes up to 0.4 s later — a start reaches `/readyz` 1–2 s
  later (12.3 s against 11.0 on average here), and an upscale decision comes after
  `upscale_delay_s` (3 s here) plus at most 0.5 s instead of 0.1.
- Serve writes every log line (an access line per request and per tier call) to its log files
  under Ray's session directory *and* to the worker's stderr, which Ray's log monitor tails,
  publishes through the GCS and `clinie serve` prints (0.016 cores of log monitor, part of the
  GCS's). With `RAY_SERVE_LOG_TO_STDERR=0` the lines, and anything a replica prints, go to the
  files only; `clinie serve` says where they are.

An operator's own value of either variable is kept (serve_app/ray_env.py sets them before Ray
starts: its processes read them as they start). The multi-node cluster (`serve_app/cluster.py`)
keeps Ray's defaults: its nodes are for placement and failover, not for the last percent of two
shared cores.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CONTROL_LOOP_ENV = "RAY_SERVE_CONTROL_LOOP_INTERVAL_S"
CONTROL_LOOP_INTERVAL_S = "0.5"
"""Ray's default is 0.1: five times the controller's idle cost for reactions that Serve's own
delays (`upscale_delay_s`, health-check periods: seconds) make no faster."""

LOG_TO_STDERR_ENV = "RAY_SERVE_LOG_TO_STDERR"
LOG_TO_STDERR = "0"

RAY_ENV = {CONTROL_LOOP_ENV: CONTROL_LOOP_INTERVAL_S, LOG_TO_STDERR_ENV: LOG_TO_STDERR}
"""Installed by serve_app/ray_env.py for `clinie serve`."""

SERVE_LOG_SUBDIR = ("logs", "serve")
"""Where Serve's log files are, under Ray's session directory."""


def logs_to_stderr(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether Serve's replicas also log to stderr (so `clinie serve` prints their lines): Ray
    reads exactly "1" as on, anything else as off."""
    env = os.environ if environ is None else environ
    return env.get(LOG_TO_STDERR_ENV, "1") == "1"
