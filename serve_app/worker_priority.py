"""The CPU priority Ray's worker processes start at, on the machines `clinie serve` and
`serve_app.cluster` start Ray on.

Ray's raylet starts every worker process at nice 15 (its `worker_niceness` setting), below its own
daemons (GCS, raylet, dashboard, log monitor: nice 0) and below anything else on the machine. The
request path is such workers: Ray's proxy and the Ingress answer every call, refusals included,
and at nice 15 they wait behind any client or daemon that wants the core. And a model replica
cannot go more than 4 steps below them (19 is Linux's lowest): on this project's 2-core machine
the models then kept about 30% of a core's share against each request-path process (CPU weights
15 against 36). Here workers start at nice 0 like the rest of the machine, and the model replicas,
the only workers that compute flat out, step down by themselves (`deployments/priority.py`,
`model_nice`): at 19 their weight is about 1.5% of the request path's.
"""

from __future__ import annotations

ENV = "RAY_worker_niceness"
"""Read by the raylet as it starts (it hands the value to every worker it starts)."""

WORKER_NICE = "0"

RAY_ENV = {ENV: WORKER_NICE}
"""Installed by serve_app/ray_env.py wherever clinie starts Ray (an operator's own value kept)."""
