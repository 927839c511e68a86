"""A Ray cluster of one head and two worker nodes on this machine, and the app deployed to it.

For exercising multi-node placement (replicas spread over nodes, a proxy on every node, a
tensor-parallel placement group on the node that declares GPUs) without a cloud:

    python -m serve_app.cluster up       # ray start: head (1 CPU), cpu-worker (2), gpu-worker (2 + 2 declared GPUs)
    python -m serve_app.cluster deploy   # serve_app/configs/serve.cluster.yaml, as `serve deploy` does
    python -m serve_app.cluster status   # replicas per deployment and node
    python -m serve_app.cluster down     # ray stop

The nodes are real `ray start` processes (the same commands a person would type, printed as they
run); `deploy` connects to the cluster and deploys through Serve's declarative API. The declared
GPUs are a Ray resource only: nothing here computes on them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, Field

from clinie.paths import CONFIG_DIR
from serve_app import ray_env

CLUSTER_CONFIG = CONFIG_DIR / "serve.cluster.yaml"


class NodeSpec(BaseModel):
    """One `ray start` node."""

    name: str = Field(description="Label, also a custom resource `clinie_<name>` (one unit) for placement checks.")
    num_cpus: float = Field(gt=0, description="Logical CPUs the node declares.")
    num_gpus: int = Field(default=0, ge=0, description="GPUs the node declares (a resource; none need exist).")


HEAD = NodeSpec(name="head", num_cpus=1)
WORKERS = [NodeSpec(name="cpu-worker", num_cpus=2), NodeSpec(name="gpu-worker", num_cpus=2, num_gpus=2)]


def label_resource(name: str) -> str:
    """The custom resource that marks a node of this cluster (`clinie_gpu_worker`, ...)."""
    return "clinie_" + name.replace("-", "_")


def node_label(node: dict[str, object]) -> str:
    """A `ray.nodes()` entry's label (`head`, `cpu-worker`, ...), else its address."""
    resources = node.get("Resources") or {}
    for spec in (HEAD, *WORKERS):
        if label_resource(spec.name) in resources:  # type: ignore[operator]
            return spec.name
    return str(node.get("NodeManagerAddress", "?"))


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def _start_args(node: NodeSpec) -> list[str]:
    args = [f"--num-cpus={node.num_cpus:g}", f"--resources={json.dumps({label_resource(node.name): 1})}"]
    return [*args, f"--num-gpus={node.num_gpus}"] if node.num_gpus else args


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def up(port: int = 6379, dashboard_port: int = 8265) -> str:
    """Start the head and the workers; returns the cluster address."""
    ray_env.install("cluster")  # every node's raylet, and the proxy and workers it starts, inherit it
    ray = _ray_cli()
    _run(
        [
            ray,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            *_start_args(HEAD),
        ]
    )
    address = f"127.0.0.1:{port}"
    for worker in WORKERS:
        _run([ray, "start", f"--address={address}", "--node-ip-address=127.0.0.1", *_start_args(worker)])
    return address


def down() -> None:
    _run([_ray_cli(), "stop", "--force"])


def deploy(config_file: Path = CLUSTER_CONFIG, address: str = "auto") -> None:
    """Connect to the running cluster, start Serve with the config's proxies, deploy the app."""
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from serve_app import local

    cfg, raw = local.local_app_config(config_file)
    ray.init(address=address, namespace="serve", log_to_driver=False)
    http, grpc_opts = raw["http_options"], raw["grpc_options"]
    serve.start(
        proxy_location=raw.get("proxy_location", "EveryNode"),
        http_options={"host": http["host"], "port": http["port"], "request_timeout_s": http["request_timeout_s"]},
        grpc_options=gRPCOptions(port=grpc_opts["port"], grpc_servicer_functions=grpc_opts["grpc_servicer_functions"]),
    )
    local.deploy(cfg, raw, timeout_s=300)
    url = f"http://{http['host']}:{http['port']}"
    print(f"deployed; ready after {local.wait_ready(url, timeout_s=300):.1f} s: {url}", flush=True)


def status(address: str = "auto") -> dict[str, dict[str, object]]:
    """Replicas per deployment, running ones by node label."""
    import ray

    from serve_app.replicas import serve_replicas

    if not ray.is_initialized():
        ray.init(address=address, namespace="serve", log_to_driver=False)
    labels = {n["NodeID"]: node_label(n) for n in ray.nodes() if n["Alive"]}
    return {
        dep: {
            "running": reps.running,
            "starting": reps.starting,
            "per_node": {labels.get(k, k): v for k, v in reps.per_node.items()},
        }
        for dep, reps in serve_replicas("clinie").items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "deploy", "status", "down"])
    p.add_argument("--config", default=str(CLUSTER_CONFIG), help="Serve config to deploy.")
    p.add_argument("--port", type=int, default=6379, help="GCS port of the head.")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only: no token to set up
    if args.action == "up":
        print(f"cluster up at {up(args.port)}")
    elif args.action == "deploy":
        deploy(Path(args.config), f"127.0.0.1:{args.port}")
    elif args.action == "status":
        print(json.dumps(status(f"127.0.0.1:{args.port}"), indent=2))
    else:
        down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
