"""clinie.client without a service: settings refused with the field named, error mapping from HTTP
bodies and gRPC statuses, retry waits, batching, and the retry loop against a port where nothing
listens (a real refused connection, over HTTP and gRPC). The calls against the running service are
in tests/integration/test_serve_e2e.py."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from pydantic import ValidationError

from clinie.client import AsyncClient, Client, ClientConfig, ClinieError
from clinie.client.client import _attempt_timeout, _batch_bodies
from clinie.client.config import retry_wait
from clinie.client.errors import from_error_body, from_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "ftp://x:1"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "grpc://host:9000/v1"}, "url"),
        ({"url": "http://host:notaport"}, "url"),
        ({"url": "http://h", "timeout": 0}, "timeout"),
        ({"url": "http://h", "retries": -1}, "retries"),
        ({"url": "http://h", "batch_size": 0}, "batch_size"),
        ({"url": "http://h", "retrys": 2}, "retrys"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, field: str):
    with pytest.raises(ValidationError) as err:
        ClientConfig(**kwargs)
    assert err.value.errors()[0]["loc"] == (field,)


def test_urls_and_default_ports():
    assert ClientConfig(url="http://localhost").base_url == "http://localhost:8000"
    assert ClientConfig(url="https://clinie.example/").base_url == "https://clinie.example"
    assert ClientConfig(url="grpc://10.0.0.1").target == "10.0.0.1:9000"
    assert ClientConfig(url="grpcs://clinie.example").target == "clinie.example:443"
    assert ClientConfig(url="grpc://[::1]:9001").target == "[::1]:9001"


def test_http_error_bodies_become_clinie_errors():
    err = from_error_body(400, '{"error": {"code": "empty_text", "message": "note text is empty"}}')
    assert (err.status, err.code, err.message, err.retryable) == (400, "empty_text", "note text is empty", False)
    err = from_error_body(429, '{"error": {"code": "overloaded", "message": "later"}}', "3")
    assert (err.code, err.retry_after, err.retryable) == ("overloaded", 3.0, True)
    # a proxy's answer that is not the contract's JSON: named by its status, text kept short
    err = from_error_body(503, "Service Unavailable " * 50, None)
    assert err.code == "http_503" and err.retryable and len(err.message) <= 200 and err.retry_after is None
    assert from_error_body(502, "", "soon").retry_after is None


def test_grpc_statuses_map_to_the_contracts_http_statuses():
    body = '{"error": {"code": "overloaded", "message": "m"}}'
    err = from_grpc("RESOURCE_EXHAUSTED", body, (("retry-after", "2"),))
    assert (err.status, err.code, err.retry_after) == (429, "overloaded", 2.0)
    err = from_grpc("INVALID_ARGUMENT", '{"error": {"code": "unknown_policy", "message": "m"}}')
    assert (err.status, err.code) == (400, "unknown_policy")
    err = from_grpc("DEADLINE_EXCEEDED", "Deadline Exceeded")
    assert (err.status, err.code, err.message) == (504, "deadline_exceeded", "Deadline Exceeded")
    assert from_grpc("UNAUTHENTICATED", None).status == 401
    assert from_grpc("DATA_LOSS", "x").status == 500


def test_a_500_is_retried_only_when_the_service_did_not_write_it():
    internal = '{"error": {"code": "internal", "message": "m"}}'
    # Ray Serve's proxy, for a request in flight on an Ingress replica that died: plain text
    proxy = "ActorDiedError: The actor died unexpectedly before finishing this task."
    assert from_error_body(500, proxy).retryable and not from_error_body(500, proxy).from_service
    assert not from_error_body(500, internal).retryable and from_error_body(500, internal).from_service
    assert from_grpc("INTERNAL", proxy).retryable
    assert not from_grpc("INTERNAL", internal).retryable
    assert not from_error_body(502, "Bad Gateway").retryable  # only a 500 (what the proxy sends)
    assert not from_error_body(504, '{"error": {"code": "deadline_exceeded", "message": "m"}}').retryable


class _FlakyProxy(BaseHTTPRequestHandler):
    """Stands in for Ray Serve's proxy when the Ingress replica under a request dies: its own
    plain-text 500 for the first `failures` requests, then the service's answer. (The real fault,
    an Ingress replica killed under load, is caused in benchmarks/faults.py; too slow for here.)"""

    failures = 1
    seen: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append(1)
        if len(self.seen) <= self.failures:
            status, body, kind = 500, b"Internal Server Error", "text/plain"
        else:
            status, body, kind = 200, json.dumps({"note_id": "n", "entities": []}).encode(), "application/json"
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_proxy() -> Iterator[tuple[str, type[_FlakyProxy]]]:
    handler = type("Handler", (_FlakyProxy,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_proxy_500_is_sent_again_and_answered(flaky_proxy: tuple[str, type[_FlakyProxy]]):
    url, handler = flaky_proxy
    seen: list[ClinieError] = []
    with Client(url, retries=2, backoff=0.01, on_retry=lambda e, w: seen.append(e)) as c:
        assert c.extract("Denies chest pain.") == {"note_id": "n", "entities": []}
    assert len(handler.seen) == 2 and [(e.status, e.from_service) for e in seen] == [(500, False)]
    handler.failures, handler.seen[:] = 10, []
    with Client(url, retries=0) as c, pytest.raises(ClinieError) as err:
        c.extract("Denies chest pain.")  # retries off: the proxy's 500 is what the caller gets
    assert (err.value.status, err.value.code, err.value.attempts) == (500, "http_500", 1)


def test_retry_waits_honour_retry_after_with_jitter_and_back_off_without():
    cfg = ClientConfig(url="http://h", backoff=0.5, max_retry_wait=10)
    rng = random.Random(7)
    waits = [retry_wait(cfg, 1, 2.0, rng) for _ in range(200)]
    assert min(waits) >= 2.0 and max(waits) <= 2.5 and len(set(waits)) > 100  # never sooner; spread out
    assert retry_wait(cfg, 1, 300.0, rng) == 10  # capped
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 10.0)):
        w = retry_wait(cfg, attempt, None, rng)
        assert ceiling / 2 <= w <= ceiling


def test_batches_are_cut_in_order_and_bad_items_are_refused():
    notes = ["a", {"note_id": "n2", "text": "b"}, "c", {"text": "d", "extra": 1}, "e"]
    bodies = _batch_bodies(notes, "fast-only", 500.0, size=2)
    assert [len(b["notes"]) for b in bodies] == [2, 2, 1]
    assert [n for b in bodies for n in b["notes"]] == [
        {"text": "a"},
        {"note_id": "n2", "text": "b"},
        {"text": "c"},
        {"text": "d"},
        {"text": "e"},
    ]
    assert all(b["policy"] == "fast-only" and b["deadline_ms"] == 500.0 for b in bodies)
    with pytest.raises(TypeError, match=r"notes\[1\]"):
        _batch_bodies(["ok", {"note_id": "x"}], None, None, 64)


def test_a_deadline_bounds_the_attempt():
    cfg = ClientConfig(url="http://h", timeout=30)
    assert _attempt_timeout(cfg, None) == 30
    assert _attempt_timeout(cfg, 2000) == 3.0
    assert _attempt_timeout(cfg, 120_000) == 30


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_unreachable_service_is_retried_then_raised(scheme: str):
    seen: list[tuple[int, float]] = []
    url = f"{scheme}://127.0.0.1:{free_port()}"
    with Client(url, timeout=5, retries=2, backoff=0.01, on_retry=lambda e, w: seen.append((e.status, w))) as c:
        with pytest.raises(ClinieError) as err:
            c.extract("Denies chest pain.")
    assert (err.value.status, err.value.code, err.value.attempts) == (503, "unreachable", 3)
    assert [s for s, _ in seen] == [503, 503] and c.retried == 2


def test_async_client_unreachable_without_retries():
    async def go() -> ClinieError:
        async with AsyncClient(f"http://127.0.0.1:{free_port()}", retries=0) as c:
            try:
                await c.extract_batch(["a", "b"])
            except ClinieError as exc:
                return exc
        raise AssertionError("no error")

    err = asyncio.run(go())
    assert err.status == 503 and err.attempts == 1


def test_grpc_unavailable_with_the_contract_body_is_the_service_and_without_it_the_connection():
    """UNAVAILABLE carrying the contract's error body (the service's, or its proxy's for a lost
    replica) keeps its code; a bare UNAVAILABLE (gRPC's own: no connection) is `unreachable`.
    Both are retryable."""
    import grpc

    from clinie.client.transports import _grpc_failure

    class Failure:  # the three methods a grpc.RpcError from a call has
        def __init__(self, details: str):
            self._details = details

        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return self._details

        def trailing_metadata(self) -> tuple:
            return ()

    body = json.dumps({"error": {"code": "unavailable", "message": "the service lost the replica; retry"}})
    served = _grpc_failure(Failure(body))
    assert (served.status, served.code, served.from_service, served.retryable) == (503, "unavailable", True, True)
    bare = _grpc_failure(Failure("failed to connect to all addresses"))
    assert (bare.status, bare.code, bare.from_service, bare.retryable) == (503, "unreachable", False, True)
