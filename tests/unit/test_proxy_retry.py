"""serve_app/proxy_retry.py: the proxy middleware that sends a request again when its Ingress
replica is lost.

The inner app here stands in for Ray's proxy in the one fault these tests need and cannot cause
without a cluster: it returns without a response, which is what the proxy does when the replica
actor dies under the request (http_util maps RayActorError to 500 and sends nothing). The real
fault, a killed Ingress replica under load over real HTTP, is in
tests/integration/test_serve_e2e.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import yaml

from clinie.paths import REPO_ROOT
from serve_app import proxy_retry, ray_env
from serve_app.proxy_retry import SPENT_HEADER, RetryLostIngress
from serve_app.proxy_shed import ShedAtFrontDoor
from serve_app.wire import spent_ms
from tests.unit.asgi import read_body


class Proxy:
    """An inner ASGI app: lost (no response) for the first `lose` calls, then answers 200 with the
    body it received and the headers it saw."""

    def __init__(self, lose: int = 0, status: int = 200, hang_s: float = 0.0):
        self.lose, self.status, self.hang_s = lose, status, hang_s
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(receive)
        self.calls.append({"headers": dict(scope["headers"]), "body": body})
        if len(self.calls) <= self.lose:
            if self.hang_s:
                await asyncio.sleep(self.hang_s)
            return  # the replica died: nothing sent
        payload = json.dumps({"echo": body.decode()}).encode()
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"content-type", b"json")]})
        await send({"type": "http.response.body", "body": payload})


def run(app: Any, body: bytes, chunks: int = 1, disconnect_after_body: bool = False) -> list[dict[str, Any]]:
    """One request through `app`; the messages it sent back."""
    sent: list[dict[str, Any]] = []
    step = max(1, len(body) // chunks)
    parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    incoming = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        if disconnect_after_body:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # the caller waits for its answer
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/extract", "headers": [(b"host", b"x")]}
    asyncio.run(app(scope, receive, send))
    return sent


def status_of(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], bytes]:
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_a_lost_request_is_sent_again_with_its_body_and_the_time_it_spent() -> None:
    inner = Proxy(lose=1)
    body = json.dumps({"text": "Denies chest pain.", "deadline_ms": 5000}).encode()
    status, headers, out = status_of(run(RetryLostIngress(inner), body, chunks=3))
    assert status == 200 and json.loads(out)["echo"] == body.decode()
    assert len(inner.calls) == 2 and inner.calls[1]["body"] == body
    assert SPENT_HEADER not in inner.calls[0]["headers"]
    assert 0 <= float(inner.calls[1]["headers"][SPENT_HEADER]) < 5000
    assert headers[b"x-clinie-proxy-retried"] == b"1"


def test_lost_twice_is_a_503_with_retry_after_and_the_contract_body() -> None:
    inner = Proxy(lose=2)
    status, headers, out = status_of(run(RetryLostIngress(inner), b'{"text": "x"}'))
    assert status == 503 and int(headers[b"retry-after"]) >= 1
    assert json.loads(out)["error"]["code"] == "unavailable"
    assert len(inner.calls) == 2  # one retry, no more


def test_an_answer_that_started_is_never_sent_again_whatever_its_status() -> None:
    inner = Proxy(status=500)  # the Ingress's own 500 (a bug): reported, not retried
    status, headers, _ = status_of(run(RetryLostIngress(inner), b'{"text": "x"}'))
    assert status == 500 and len(inner.calls) == 1 and b"x-clinie-proxy-retried" not in headers


def test_a_caller_that_hung_up_is_not_retried() -> None:
    class Watching(Proxy):
        """Like Ray's proxy, listens for the caller's hang-up after the body; gives up on it."""

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            self.calls.append({"headers": dict(scope["headers"])})
            while (await receive())["type"] != "http.disconnect":
                pass

    inner = Watching()
    sent = run(RetryLostIngress(inner), b'{"text": "x"}', disconnect_after_body=True)
    assert len(inner.calls) == 1 and sent == []  # no retry, and no answer invented for nobody


class SlowSecond(Proxy):
    """Lost at once the first time; the second time (no replacement Ingress yet) nothing for 30 s."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.hang_s = 30 if self.calls else 0
        await super().__call__(scope, receive, send)


def test_a_retry_that_would_outlive_the_deadline_is_refused_within_it() -> None:
    inner = SlowSecond(lose=2)
    body = json.dumps({"text": "x", "deadline_ms": 300}).encode()
    t0 = time.perf_counter()
    sent = run(RetryLostIngress(inner), body)
    elapsed = time.perf_counter() - t0
    status, headers, _ = status_of(sent)
    assert status == 503 and headers[b"retry-after"] and len(inner.calls) == 2
    assert elapsed < 2.0, f"a 300 ms deadline waited {elapsed:.1f} s for a replacement Ingress"


def test_a_body_too_big_to_hold_passes_through_without_a_retry() -> None:
    inner = Proxy(lose=1)
    body = b"x" * 5000
    sent = run(RetryLostIngress(inner, max_body_bytes=1000), body, chunks=10)
    assert len(inner.calls) == 1 and inner.calls[0]["body"] == body
    assert not [m for m in sent if m["type"] == "http.response.start"]  # as without the middleware


def test_a_body_declared_too_big_is_not_read_by_the_proxy() -> None:
    class Counting(Proxy):
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            self.calls.append({"headers": dict(scope["headers"])})  # refuses without reading (413)
            await send({"type": "http.response.start", "status": 413, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    inner = Counting()
    sent: list[dict[str, Any]] = []
    read: list[int] = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-length", b"999999999")]}
    asyncio.run(RetryLostIngress(inner, max_body_bytes=1000)(scope, receive, send))
    assert read == [] and len(inner.calls) == 1 and sent[0]["status"] == 413


def test_the_ingress_reads_the_spent_header_defensively() -> None:
    assert spent_ms(None) == 0 and spent_ms("") == 0
    assert spent_ms("1500") == 1500.0
    for bad in ("-1", "nan", "inf", "1e12", "abc"):
        assert spent_ms(bad) == 0, bad


def test_every_proxy_gets_the_hook() -> None:
    """`clinie serve` and the local cluster set the env var before Ray starts; the KubeRay
    manifest sets it on every container (each pod runs a proxy); the cluster launcher config on
    every node's container."""
    for where in ("local", "cluster"):
        assert ray_env.settings(where)[proxy_retry.ENV] == proxy_retry.CALLBACK  # tests/unit/test_ray_env.py
    manifest = yaml.safe_load((REPO_ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = pod["template"]["spec"]["containers"]
        assert {"name": proxy_retry.ENV, "value": proxy_retry.CALLBACK} in container["env"], container["name"]
    launcher = yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())
    assert f"--env {proxy_retry.ENV}={proxy_retry.CALLBACK}" in launcher["docker"]["run_options"]
    retry, shed = proxy_retry.middlewares()  # Ray wraps in list order: the last is outermost
    assert retry.cls is RetryLostIngress and shed.cls is ShedAtFrontDoor


def test_grpc_calls_on_a_lost_replica_are_unavailable_not_internal(monkeypatch: Any) -> None:
    """Ray's gRPC proxy has no middleware hook: the same callback remaps the one failure it owns (a
    dead or unreachable replica actor) to UNAVAILABLE with the contract's body; everything else
    keeps Ray's own status."""
    import grpc
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve._private import proxy

    monkeypatch.setattr(proxy, "get_grpc_response_status", proxy.get_grpc_response_status)  # restored after
    assert proxy_retry.lost_replica_is_unavailable() and proxy_retry.lost_replica_is_unavailable()  # idempotent
    mapped = proxy.get_grpc_response_status
    for lost in (ActorDiedError(), ActorUnavailableError("unreachable", None)):
        status = mapped(lost, 30.0, "r1")
        assert status.code == grpc.StatusCode.UNAVAILABLE and status.is_error
        assert json.loads(status.message)["error"]["code"] == "unavailable"
    assert mapped(TimeoutError(), 30.0, "r2").code == grpc.StatusCode.DEADLINE_EXCEEDED  # Ray's own
    assert mapped(ValueError("a bug"), 30.0, "r3").code == grpc.StatusCode.INTERNAL  # not hidden
