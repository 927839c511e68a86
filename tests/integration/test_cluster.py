"""The application on a three-node Ray cluster on this machine (ray.cluster_utils.Cluster: real
raylets, one head and two workers, one of which declares two GPUs), deployed from
serve_app/configs/serve.cluster.yaml with a proxy on every node.

Checked: FastTier replicas spread over nodes; the LLM tier's TP=2 placement group lands
STRICT_PACK on the node that declares the GPUs; requests keep being answered while a worker node
is removed, and the application is ready and back at two FastTier replicas afterwards.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_app.cluster import label_resource

pytestmark = pytest.mark.slow

HTTP_PORT, GRPC_PORT = 18323, 19323
URL = f"http://127.0.0.1:{HTTP_PORT}"
NOTE = "Patient denies chest pain. Takes aspirin 81 mg daily. Severe headache since Monday."


def call(path: str, body: Any = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request. A connection the server side dropped before answering (a node's proxy that was
    removed with its node takes its open connections along) is sent once more, as a load balancer
    or `clinie.client` would do for this idempotent call; any other outcome is returned."""
    data = json.dumps(body).encode() if body is not None else None
    for attempt in (1, 2):
        req = urllib.request.Request(URL + path, data=data, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}"), {k.lower(): v for k, v in r.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}"), {k.lower(): v for k, v in e.headers.items()}
        except (ConnectionError, urllib.error.URLError):
            if attempt == 2:
                return -1, {}, {}
            time.sleep(0.2)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster(tiny_model: Path, clinie_home: Path) -> Iterator[dict[str, Any]]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.config import gRPCOptions

    from deployments.llm_tier.default_model import ensure_default_llm
    from serve_app import local, ray_env
    from serve_app.cluster import CLUSTER_CONFIG

    os.environ["CLINIE_HOME"] = str(clinie_home)  # the nodes' workers inherit this environment
    ray_env.install("cluster")  # as `serve_app.cluster up`: every node's proxy retries a lost Ingress
    ensure_default_llm()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {label_resource("head"): 1}})
    nodes = {
        "cpu-worker": c.add_node(num_cpus=2, resources={label_resource("cpu-worker"): 1}),
        "gpu-worker": c.add_node(num_cpus=2, num_gpus=2, resources={label_resource("gpu-worker"): 1}),
    }
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="serve", log_to_driver=False)
    cfg, raw = local.local_app_config(CLUSTER_CONFIG, fast_tier_model=str(tiny_model))
    # Test-only: the LLM tier reserves a TP=2 placement group of two GPU bundles on one node, as
    # serve.production.yaml does with eight. The engine inside still runs the embedded model on
    # CPU with TP=1 (there is no GPU to compute on); what is checked is where Ray places it.
    llm = next(d for d in raw["applications"][0]["deployments"] if d["name"] == "LLMTier")
    llm["placement_group_bundles"] = [{"CPU": 0.5, "GPU": 1}, {"CPU": 0.5, "GPU": 1}]
    llm["placement_group_strategy"] = "STRICT_PACK"
    llm["ray_actor_options"] = {"num_cpus": 0.5}
    serve.start(
        proxy_location=raw["proxy_location"],
        http_options={"host": "127.0.0.1", "port": HTTP_PORT, "request_timeout_s": 310},
        grpc_options=gRPCOptions(port=GRPC_PORT, grpc_servicer_functions=[local.GRPC_SERVICER]),
    )
    try:
        local.deploy(cfg, raw, timeout_s=300)
        local.wait_ready(URL, timeout_s=180)
        node_ids = {name: node.node_id for name, node in nodes.items()}
        yield {"cluster": c, "nodes": nodes, "node_ids": node_ids}
    finally:
        serve.shutdown()
        ray.shutdown()
        c.shutdown()


def _fast() -> Any:
    from serve_app.replicas import serve_replicas

    return serve_replicas("clinie")["FastTier"]


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


def test_fast_tier_replicas_spread_over_nodes(cluster: dict[str, Any]) -> None:
    _wait(lambda: _fast().running == 2, 120, "two FastTier replicas running")
    per_node = _fast().per_node
    assert len(per_node) == 2 and set(per_node.values()) == {1}, per_node
    assert set(per_node) <= {*cluster["node_ids"].values(), cluster["cluster"].head_node.node_id}
    status, body, _ = call("/v1/extract", {"text": NOTE, "policy": "fast-only"})
    assert status == 200 and body["entities"] is not None


def test_llm_placement_group_is_strict_pack_on_the_gpu_node(cluster: dict[str, Any]) -> None:
    import ray

    gpu_node = cluster["node_ids"]["gpu-worker"]

    def placed() -> list[dict[str, Any]]:
        table = ray.util.placement_group_table().values()
        return [pg for pg in table if pg["state"] == "CREATED" and any(b.get("GPU") for b in pg["bundles"].values())]

    _wait(lambda: bool(placed()), 120, "the LLM tier's placement group created")
    (pg,) = placed()
    assert pg["strategy"] == "STRICT_PACK" and len(pg["bundles"]) == 2
    assert set(pg["bundles_to_node_id"].values()) == {gpu_node}


def test_requests_keep_being_answered_while_a_worker_node_is_removed(cluster: dict[str, Any]) -> None:
    _wait(lambda: _fast().running == 2, 120, "two FastTier replicas running")
    stop = time.time() + 25
    answers: list[tuple[int, dict[str, str]]] = []

    def client() -> None:
        while time.time() < stop:
            status, _, headers = call("/v1/extract", {"text": NOTE, "policy": "fast-only"})
            answers.append((status, headers))

    c, nodes = cluster["cluster"], cluster["nodes"]
    hosting = set(_fast().per_node)
    victim = next(name for name in ("cpu-worker", "gpu-worker") if cluster["node_ids"][name] in hosting)
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        time.sleep(6)
        c.remove_node(nodes[victim])  # takes a FastTier replica (and that node's proxy) with it
        for f in futures:
            f.result()
    codes = [s for s, _ in answers]
    tally = {code: codes.count(code) for code in set(codes)}
    assert set(codes) <= {200, 503}, tally  # a result or a retryable refusal; never a 500 or silence
    assert all(h.get("retry-after") for s, h in answers if s == 503), tally
    assert codes.count(200) >= 0.9 * len(codes), tally
    _wait(lambda: call("/readyz")[0] == 200, 60, "ready again after losing a node")

    spec = {"num_gpus": 2} if victim == "gpu-worker" else {}
    c.add_node(num_cpus=2, resources={label_resource(victim): 1}, **spec)  # capacity comes back
    _wait(lambda: _fast().running == 2, 180, "FastTier back at two replicas on the new node")
    assert len(_fast().per_node) == 2
    assert call("/v1/extract", {"text": NOTE, "policy": "fast-only"})[0] == 200
