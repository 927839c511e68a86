"""Replica counts of a Serve application, per deployment and per node, as the controller sees them.

Used by the ingress (admission counts the fast tier's running and starting replicas) and by the
load benchmark (the replica timeline). Needs a connected Ray (inside a replica, or a driver).
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

STARTING_STATES = frozenset({"STARTING", "UPDATING", "RECOVERING"})


class DeploymentReplicas(BaseModel):
    """One deployment's replicas right now."""

    running: int = Field(default=0, ge=0, description="Replicas in state RUNNING.")
    starting: int = Field(default=0, ge=0, description="Replicas being started (STARTING, UPDATING, RECOVERING).")
    max_replicas: int = Field(default=1, ge=1, description="The autoscaler's upper bound (or num_replicas).")
    min_replicas: int = Field(default=1, ge=0, description="The autoscaler's lower bound (or num_replicas).")
    per_node: dict[str, int] = Field(default_factory=dict, description="Running replicas by node id.")


def serve_replicas(app_name: str) -> dict[str, DeploymentReplicas]:
    """Every deployment of `app_name` with its replica counts (empty if the app does not exist)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    app = (details.get("applications") or {}).get(app_name) or {}
    out: dict[str, DeploymentReplicas] = {}
    for name, dep in (app.get("deployments") or {}).items():
        replicas = dep.get("replicas") or []
        running = [r for r in replicas if r.get("state") == "RUNNING"]
        cfg = dep.get("deployment_config") or {}
        auto = cfg.get("autoscaling_config") or {}
        fixed = cfg.get("num_replicas") or 1
        out[name] = DeploymentReplicas(
            running=len(running),
            starting=sum(r.get("state") in STARTING_STATES for r in replicas),
            max_replicas=max(1, int(auto.get("max_replicas") or fixed)),
            min_replicas=int(auto["min_replicas"]) if "min_replicas" in auto else int(fixed),
            per_node=dict(Counter(str(r.get("node_id") or "?") for r in running)),
        )
    return out
