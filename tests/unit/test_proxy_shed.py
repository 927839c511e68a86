"""serve_app/proxy_shed.py: Ray's proxy refuses, from the Ingress's shed hint, what the Ingress
would refuse, and sends everything else on.

The inner app stands in for Ray's proxy app and the Ingress behind it, answering what the Ingress
answers behind the middleware (a refusal at once, with the pace and hint headers; serve_app/
service.py): these tests are about what the middleware does with those answers. The real chain,
Ray's proxy with this middleware before a real Ingress under a storm, is in
tests/integration/test_serve_e2e.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from serve_app.proxy_shed import ShedAtFrontDoor
from serve_app.shedding import HINT_HEADER, PACE_HEADER, PACED_HEADER, ShedHint, refusal_message
from tests.unit.asgi import read_body

HINT = ShedHint(
    ahead_ms=4000,
    ms_per_char=1.0,
    ttl_ms=500,
    pace_ms=40,
    retry_after_s=1,
    default_deadline_ms=30_000,
    max_note_chars=10_000,
    max_body_bytes=1 << 20,
    policy="fast-only",
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Ingress:
    """Refuses every request with the hint headers while `refusing`, else answers 200."""

    def __init__(self, hint: ShedHint | None = HINT) -> None:
        self.hint = hint
        self.refusing = True
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(receive)
        self.calls.append({"headers": list(scope["headers"]), "body": body, "path": scope["path"]})
        if self.refusing:
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
            headers.append((PACE_HEADER.encode(), b"40"))
            if self.hint is not None:
                headers.append((HINT_HEADER.encode(), self.hint.model_dump_json().encode()))
            payload = {"error": {"code": "overloaded", "message": "ingress"}}
            await send({"type": "http.response.start", "status": 429, "headers": headers})
        else:
            payload = {"ok": True}
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"json")]})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


def request(
    app: Any,
    body: dict[str, Any] | bytes,
    key: str = "k1",
    path: str = "/v1/extract",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[bytes, bytes], dict[str, Any], float]:
    """One request through `app`: status, headers, JSON body, seconds taken."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    incoming = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-length", str(len(raw)).encode()), (b"authorization", f"Bearer {key}".encode())]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers + (extra or [])}
    t0 = time.perf_counter()
    asyncio.run(app(scope, receive, send))
    seconds = time.perf_counter() - t0
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(payload), seconds


def note(chars: int, deadline_ms: float | None = 3000, policy: str | None = "fast-only") -> dict[str, Any]:
    body: dict[str, Any] = {"text": "x" * chars}
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    if policy is not None:
        body["policy"] = policy
    return body


def primed() -> tuple[ShedAtFrontDoor, Ingress, Clock]:
    """A middleware that has passed on one hinted refusal of caller k1, policy fast-only."""
    inner, clock = Ingress(), Clock()
    mw = ShedAtFrontDoor(inner, clock=clock)
    status, _, _, _ = request(mw, note(100))
    assert status == 429 and len(inner.calls) == 1
    return mw, inner, clock


def test_the_ingress_refusal_is_paced_here_and_its_internal_headers_stay_here() -> None:
    inner = Ingress()
    mw = ShedAtFrontDoor(inner, clock=Clock())
    status, headers, body, seconds = request(mw, note(100), extra=[(PACED_HEADER.encode(), b"forged")])
    assert status == 429 and body["error"]["message"] == "ingress"
    assert seconds >= 0.04  # the pace the Ingress asked for, waited here
    assert PACE_HEADER.encode() not in headers and HINT_HEADER.encode() not in headers
    assert headers[b"retry-after"] == b"1"
    seen = [(k, v) for k, v in inner.calls[0]["headers"] if k == PACED_HEADER.encode()]
    assert seen == [(PACED_HEADER.encode(), b"paced")]  # the caller's own copy is replaced


def test_what_the_hint_says_the_ingress_would_refuse_is_refused_here_alike() -> None:
    mw, inner, _ = primed()
    status, headers, body, seconds = request(mw, note(500))  # 4 s ahead + 0.5 s > 3 s
    assert status == 429 and len(inner.calls) == 1  # the Ingress never saw it
    assert body == {"error": {"code": "overloaded", "message": refusal_message(3000)}}
    assert headers[b"retry-after"] == b"2" and headers[b"content-type"] == b"application/json"
    assert headers[b"x-request-id"]
    assert seconds >= 0.04  # paced like the Ingress's own
    assert mw.refused.value == 1
    # the caller's own request id comes back, as Ray's proxy would send it
    _, headers, _, _ = request(mw, note(500), extra=[(b"x-request-id", b"abc-123")])
    assert headers[b"x-request-id"] == b"abc-123"


def test_everything_else_goes_on_to_the_ingress() -> None:
    mw, inner, _ = primed()
    inner.refusing = False
    cases: list[tuple[dict[str, Any] | bytes, dict[str, Any]]] = [
        (note(500, deadline_ms=6000), {}),  # a deadline it fits
        (note(500, policy="default"), {}),  # another policy: no hint for it
        (note(500, policy=None), {}),  # no policy (the default): no hint for it either
        (note(500), {"key": "k2"}),  # another caller
        (note(500), {"path": "/v1/extract/batch"}),  # batches are the Ingress's to judge
        (note(20_000), {}),  # over the Ingress's note limit: its 413
        ({"text": "   ", "deadline_ms": 3000, "policy": "fast-only"}, {}),  # empty: its 400
        ({"text": "x", "deadline_ms": -1, "policy": "fast-only"}, {}),  # a bad deadline: its 400
        (b"{not json", {}),
        (b"[1, 2]", {}),
    ]
    for body, kwargs in cases:
        before = len(inner.calls)
        status, _, _, _ = request(mw, body, **kwargs)
        assert status == 200 and len(inner.calls) == before + 1, (body, kwargs)
    assert mw.refused.value == 0


def test_the_body_sent_on_is_the_body_that_came() -> None:
    mw, inner, _ = primed()
    inner.refusing = False
    body = note(10, deadline_ms=6000)
    request(mw, body)
    assert json.loads(inner.calls[-1]["body"]) == body


def test_a_hint_drains_and_expires() -> None:
    mw, inner, clock = primed()
    assert request(mw, note(500))[0] == 429 and len(inner.calls) == 1
    clock.t += 0.3  # 3.7 s ahead + 0.5 s still over 3 s
    assert request(mw, note(500))[0] == 429 and len(inner.calls) == 1
    clock.t += 0.19  # 3.51 s ahead: a short note fits 3.52 s
    request(mw, note(5, deadline_ms=3520))
    assert len(inner.calls) == 2  # sent on (and refused there: a fresh hint)
    clock.t += 0.2
    assert request(mw, note(500))[0] == 429 and len(inner.calls) == 2  # the fresh hint refuses
    clock.t += 0.5  # past its ttl
    inner.refusing = False
    assert request(mw, note(500))[0] == 200 and len(inner.calls) == 3


def test_a_refusal_without_a_hint_teaches_nothing() -> None:
    inner = Ingress(hint=None)  # e.g. the in-flight cap, or an Ingress of another version
    mw = ShedAtFrontDoor(inner, clock=Clock())
    for _ in range(3):
        assert request(mw, note(500))[0] == 429
    assert len(inner.calls) == 3 and mw.refused.value == 0


def test_other_traffic_passes_untouched() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = ShedAtFrontDoor(app)
    asyncio.run(mw({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]


def test_a_caller_that_leaves_before_its_body_is_not_sent_on() -> None:
    mw, inner, _ = primed()
    messages = [{"type": "http.request", "body": b'{"text": "x', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-length", b"400"), (b"authorization", b"Bearer k1")]
    asyncio.run(mw({"type": "http", "method": "POST", "path": "/v1/extract", "headers": headers}, receive, send))
    assert sent == [] and len(inner.calls) == 1  # only the priming request reached the Ingress
