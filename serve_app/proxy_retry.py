"""Ray Serve's proxies when the Ingress replica a request was on is lost: HTTP sends it again,
gRPC answers UNAVAILABLE instead of INTERNAL.

When an Ingress replica dies with requests on it, Ray's proxy gets the actor's death from the
handle and answers those requests with its own bare 500 (`http_util.get_http_response_status`
maps `RayActorError` to 500 and sends nothing; uvicorn fills in "Internal Server Error"). The
service's code is gone with the replica, so only the proxy can do better. This ASGI middleware
wraps the proxy's app (Ray's hook: `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
serve_app.proxy_retry:middlewares`, set by `clinie serve`, `serve_app.cluster`, ray_cluster.yaml
and the KubeRay manifest) and, for a request that got *no response at all* from the Ingress:

- sends it once more (extraction is a pure function: a second answer is the same answer), with
  `x-clinie-spent-ms` saying how much of its deadline the first attempt used, so the Ingress
  holds the request to the deadline its caller set, not a fresh one (serve_app/service.py);
- if that attempt also gets nothing, or gets nothing before the request's deadline, answers 503
  `unavailable` with `Retry-After` and the contract's error body: a retryable refusal, never a 500.

Ray's gRPC proxy has no such hook and cannot send a call again; the same callback remaps its one
status for a lost replica, `INTERNAL`, to `UNAVAILABLE` with the contract's error body
(`lost_replica_is_unavailable`): a retryable answer that `clinie.client` and gRPC clients with a
retry policy send again.

A response that has started (any status the Ingress chose, 500 included) passes through
untouched: only a request the service never answered is sent again. The body is held in memory
to send it again, bounded by `MAX_BODY_BYTES` (above it the request passes through with no retry;
the Ingress refuses it as too large anyway). A caller that hangs up is not retried. Nothing here
reads or logs note text: the body is parsed only on the retry path, for its `deadline_ms`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serve_app.config import MAX_DEADLINE_MS, AppConfig, Limits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("clinie.proxy_retry")

CALLBACK = "serve_app.proxy_retry:middlewares"
"""The value of `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` that installs this middleware."""
ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
SPENT_HEADER = b"x-clinie-spent-ms"
"""Milliseconds of the caller's deadline already used when the proxy sends a request again."""
RETRIED_HEADER = b"x-clinie-proxy-retried"
"""On a response: the proxy sent the request again after losing the Ingress replica it was on."""
MAX_BODY_BYTES: int = Limits.model_fields["max_body_bytes"].default
"""The largest body held for a retry: the Ingress's default limit (a larger one it refuses anyway,
unless a config raises the limit; such bodies then pass through without a retry)."""
DEFAULT_DEADLINE_MS: float = AppConfig.model_fields["default_deadline_ms"].default
"""The deadline of a request that names none (the proxy does not see the app's config: a config
that changes the default changes only how long a retry may wait for a replacement Ingress before
this middleware's 503)."""
RAY_ENV = {ENV: CALLBACK}
"""Installed by serve_app/ray_env.py wherever clinie starts Ray: Ray's proxy actors inherit the
environment of the raylet that starts them (an operator's own hook is kept)."""
RETRY_AFTER_S = 2
"""A replacement Ingress replica is ready in seconds (README, faults table)."""


def middlewares() -> list[Any]:
    """Ray's proxy callback (run once in each proxy process as it starts): the middleware list it
    wraps its HTTP app with (this module's retry, and serve_app/proxy_shed.py's refusals from the
    Ingress's shed hints); and, for the same process's gRPC proxy, `lost_replica_is_unavailable`."""
    from starlette.middleware import Middleware

    from serve_app.proxy_shed import ShedAtFrontDoor

    lost_replica_is_unavailable()
    # Ray wraps the app with each in turn: the last is outermost, so a request refused from a shed
    # hint is answered before this module holds its body for a retry
    return [Middleware(RetryLostIngress), Middleware(ShedAtFrontDoor)]


LOST_MESSAGE = "the service lost the replica answering this request; retry"


def lost_replica_is_unavailable() -> bool:
    """Ray's gRPC proxy: a call whose Ingress replica died ends in `UNAVAILABLE` (the contract's 503:
    retryable) with the contract's error body as details, instead of `INTERNAL` (a 500).

    Ray's gRPC proxy has no middleware hook, so this wraps the one function in it that maps the
    failure to a status (`ray.serve._private.proxy.get_grpc_response_status`; Ray is pinned in the
    lock, and tests/integration/test_serve_e2e.py kills an Ingress replica under gRPC calls, so an
    upgrade that moves it fails there). Only a dead or unreachable replica actor is remapped, never
    an error raised by the service's own code (`RayTaskError`). Returns whether it is installed."""
    try:
        import grpc
        from ray.exceptions import RayActorError, RayTaskError
        from ray.serve._private import proxy
        from ray.serve._private.proxy_request_response import ResponseStatus
    except ImportError:  # not in a Ray Serve proxy's environment
        return False
    original = getattr(proxy, "get_grpc_response_status", None)
    if original is None:
        log.warning("Ray's gRPC proxy has no get_grpc_response_status: lost replicas stay INTERNAL")
        return False
    if getattr(original, "clinie_wrapped", False):
        return True

    def status(exc: BaseException, request_timeout_s: float | None, request_id: str) -> Any:
        if isinstance(exc, RayActorError) and not isinstance(exc, RayTaskError):
            details = json.dumps({"error": {"code": "unavailable", "message": LOST_MESSAGE}})
            return ResponseStatus(code=grpc.StatusCode.UNAVAILABLE, is_error=True, message=details)
        return original(exc, request_timeout_s, request_id)

    status.clinie_wrapped = True  # type: ignore[attr-defined]
    proxy.get_grpc_response_status = status
    return True


def _deadline_ms(body: bytes) -> float:
    """The request's deadline: its `deadline_ms` when it is a valid one, else the default."""
    try:
        value = json.loads(body).get("deadline_ms")
    except (ValueError, AttributeError, RecursionError):
        return DEFAULT_DEADLINE_MS
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= MAX_DEADLINE_MS:
        return float(value)
    return DEFAULT_DEADLINE_MS


class _Attempt:
    """One pass of the request through the proxy: did a response start, did the caller leave."""

    def __init__(self, body: bytes, receive: Receive, send: Send, retried: bool):
        self.body: bytes | None = body
        self._receive, self._send, self._retried = receive, send, retried
        self.started = asyncio.Event()
        self.client_gone = False

    async def receive(self) -> Message:
        if self.body is not None:  # the held body, once; then the caller's own channel (disconnects)
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.client_gone = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started.set()
            if self._retried:
                message = {**message, "headers": [*message.get("headers", []), (RETRIED_HEADER, b"1")]}
        await self._send(message)


class RetryLostIngress:
    """ASGI middleware for Ray's HTTP proxy (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:  # not held: no retry
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the caller left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
            if size > self.max_body_bytes:  # too big to hold: no retry, the Ingress refuses it
                await self.app(scope, replay(chunks, receive, more=True), send)
                return
        body = b"".join(chunks)

        first = _Attempt(body, receive, send, retried=False)
        if await self._run(scope, first):
            return
        if first.client_gone:
            return
        deadline_s = _deadline_ms(body) / 1000
        spent_s = time.monotonic() - t0
        log.warning("the Ingress replica was lost under a request; sending it again (%.0f ms spent)", spent_s * 1000)
        if spent_s < deadline_s:
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != SPENT_HEADER]
            retry_scope = {**scope, "headers": [*headers, (SPENT_HEADER, str(math.ceil(spent_s * 1000)).encode())]}
            second = _Attempt(body, receive, send, retried=True)
            if await self._run(retry_scope, second, timeout_s=deadline_s - spent_s) or second.client_gone:
                return
        await _unavailable(send)

    async def _run(self, scope: Scope, attempt: _Attempt, timeout_s: float | None = None) -> bool:
        """Run the proxy's app once; True when a response started (it then runs to its end).

        With `timeout_s`, an attempt that has not started a response by then is cancelled."""
        if timeout_s is None:  # the first attempt, on every request: no task, no timer (the proxy's CPU)
            try:
                await self.app(scope, attempt.receive, attempt.send)
            except Exception as exc:
                if attempt.started.is_set():
                    raise  # the response is under way: its errors are the proxy's to report
                log.warning("proxy attempt failed before a response: %s", type(exc).__name__)
            return attempt.started.is_set()
        task = asyncio.ensure_future(self.app(scope, attempt.receive, attempt.send))
        started = asyncio.ensure_future(attempt.started.wait())
        try:
            await asyncio.wait({task, started}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this request itself is cancelled (the server shuts down): so is the attempt
            task.cancel()
            raise
        finally:
            started.cancel()
        if attempt.started.is_set():
            await task  # the response is on its way; its errors are the proxy's to report
            return True
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # this request is cancelled, not only the attempt
                raise
        except Exception as exc:  # the proxy's failure to reach a replica: retried or refused
            log.warning("proxy attempt failed before a response: %s", type(exc).__name__)
        return attempt.started.is_set()


def replay(chunks: list[bytes], receive: Receive, more: bool) -> Receive:
    """A receive channel that first gives back the chunks already read, then the caller's own."""
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or more}
        return await receive()

    return replay


async def _unavailable(send: Send) -> None:
    body = json.dumps({"error": {"code": "unavailable", "message": LOST_MESSAGE}}).encode()
    await send_json(send, 503, body, [(b"retry-after", str(RETRY_AFTER_S).encode())])


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """An answer made in the proxy itself: `body` (JSON) with its type and length, and `headers`."""
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})
