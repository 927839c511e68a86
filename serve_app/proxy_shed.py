"""Ray Serve's HTTP proxy refuses, itself, what the Ingress's last refusal says it would refuse.

The ASGI middleware half of serve_app/shedding.py (the why and the rules are there), installed with
serve_app/proxy_retry.py's by Ray's proxy callback (`serve_app.proxy_retry:middlewares`):

- every HTTP request it passes on carries `PACED_HEADER` (a caller's own copy is dropped), so the
  Ingress answers its admission refusals at once and this middleware waits `PACE_HEADER` ms
  before passing them on (the wait costs no process anything);
- a 429 of `POST /v1/extract` with a `ShedHint` leaves the hint here, under the caller's API key
  and the request's policy, for the hint's ttl; the two internal headers never reach the caller;
- while a hint is fresh, a single-note request of the same API key and policy is read and checked
  by the Ingress's own rules (body size, JSON, `ExtractRequest`, `validate_text` with the hint's
  limits): when it is valid and `shedding.decide` says the Ingress would refuse it, this answers
  the same 429 (code `overloaded`, the same message and Retry-After rule, after the same pace)
  and the request goes no further. Anything else goes on unchanged: batches, other paths, bodies
  that are not valid requests (their 4xx is the Ingress's to give), callers with no fresh hint.

Refusals made here are counted in Ray's metrics as `clinie_front_door_refused` (the Ingress's
`/metrics` counts only what reaches it). API keys are held only as SHA-256 digests; note text is
read only to count its characters and validate it, never kept or logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from clinie.errors import InputError
from clinie.validation import validate_text
from serve_app.proxy_retry import ASGIApp, Message, Receive, Scope, Send, replay, send_json
from serve_app.shedding import (
    HINT_HEADER,
    INTERNAL_RESPONSE_HEADERS,
    PACE_HEADER,
    PACED_HEADER,
    PACED_VALUE,
    ShedHint,
    decide,
    refusal_message,
)
from serve_app.wire import ApiError, ExtractRequest, parse_json

EXTRACT_PATH = "/v1/extract"
_PACED = (PACED_HEADER.encode(), PACED_VALUE.encode())
_PACE = PACE_HEADER.encode()
_HINT = HINT_HEADER.encode()
MAX_CALLERS = 1024
"""Most callers (API keys) whose hints are held at once; the least recently refused goes first."""


def _caller(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The digest of the credential the Ingress authorizes by (`authorization`, else `x-api-key`)."""
    found = {k.lower(): v for k, v in headers if k.lower() in (b"authorization", b"x-api-key")}
    return hashlib.sha256(found.get(b"authorization") or found.get(b"x-api-key") or b"").digest()


class _Counter:
    """`clinie_front_door_refused` in Ray's metrics when running in a Ray process; a plain count always."""

    def __init__(self) -> None:
        self.value = 0
        self._ray: Any = None
        try:
            from ray.util.metrics import Counter

            self._ray = Counter("clinie_front_door_refused", "Requests refused by Ray's proxy from a shed hint.")
        except Exception:  # not in a Ray worker (unit tests): the plain count only
            pass

    def inc(self) -> None:
        self.value += 1
        if self._ray is not None:
            self._ray.inc()


class ShedAtFrontDoor:
    """ASGI middleware for Ray's HTTP proxy (see the module docstring)."""

    def __init__(self, app: ASGIApp, clock: Callable[[], float] = time.monotonic):
        self.app = app
        self._clock = clock
        # caller digest -> policy -> (when received, hint); callers in least-recently-refused order
        self._hints: OrderedDict[bytes, dict[str | None, tuple[float, ShedHint]]] = OrderedDict()
        self.refused = _Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != _PACED[0]]
        headers.append(_PACED)
        scope = {**scope, "headers": headers}
        if scope.get("method") != "POST" or not str(scope.get("path", "")).endswith(EXTRACT_PATH):
            await self.app(scope, receive, _paced_send(send))
            return
        caller = _caller(headers)
        held = self._fresh(caller)
        if not held:
            await self.app(scope, receive, self._learning_send(send, caller))
            return
        try:
            body = await _read_body(receive, headers, min(h.max_body_bytes for _, h in held.values()))
        except _CallerLeft:
            return  # before sending its body: nobody to answer
        if body is None:  # a body not worth holding here: as it comes, the Ingress decides
            await self.app(scope, receive, self._learning_send(send, caller))
            return
        refusal = self._refusal(held, body)
        if refusal is not None:
            pace_ms, error = refusal
            self.refused.inc()
            await _answer(send, error, pace_ms, headers)
            return
        await self.app(scope, replay([body], receive, more=False), self._learning_send(send, caller))

    # -- hints -----------------------------------------------------------------------------------

    def _fresh(self, caller: bytes) -> dict[str | None, tuple[float, ShedHint]]:
        """This caller's hints that may still refuse, by policy (stale ones are dropped)."""
        held = self._hints.get(caller)
        if not held:
            return {}
        now = self._clock()
        for policy, (at, hint) in list(held.items()):
            if (now - at) * 1000 >= hint.ttl_ms:
                del held[policy]
        if not held:
            del self._hints[caller]
        return held

    def _learn(self, caller: bytes, hint: ShedHint) -> None:
        held = self._hints.pop(caller, {})
        held[hint.policy] = (self._clock(), hint)
        self._hints[caller] = held
        while len(self._hints) > MAX_CALLERS:
            self._hints.popitem(last=False)

    def _refusal(self, held: dict[str | None, tuple[float, ShedHint]], body: bytes) -> tuple[float, ApiError] | None:
        """(pace ms, the 429) when the caller's hint for this request's policy says the Ingress
        would refuse it; None to send it on (including every request that is not a valid one)."""
        try:
            payload = parse_json(body)
            if not isinstance(payload, dict):
                return None
            req = ExtractRequest.model_validate(payload)
        except (ApiError, ValidationError):
            return None
        if req.policy not in held:
            return None
        at, hint = held[req.policy]
        try:
            text = validate_text(req.text, hint.max_note_chars)
        except InputError:
            return None
        deadline = req.deadline_ms if req.deadline_ms is not None else hint.default_deadline_ms
        retry = decide(hint, (self._clock() - at) * 1000, len(text), deadline)
        if retry is None:
            return None
        return hint.pace_ms, ApiError(429, "overloaded", refusal_message(deadline), retry)

    def _learning_send(self, send: Send, caller: bytes) -> Send:
        """`send` that paces an Ingress refusal and keeps its hint (the internal headers dropped)."""

        def learn(raw_hint: bytes) -> None:
            try:
                self._learn(caller, ShedHint.model_validate_json(raw_hint))
            except ValidationError:
                pass  # an Ingress of another version: no hint, the Ingress decides

        return _paced_send(send, learn)


def _paced_send(send: Send, learn: Callable[[bytes], None] | None = None) -> Send:
    """`send` that drops the internal headers of the Ingress's answer, waits the pace it asks for
    before passing a refusal on, and gives a 429's hint to `learn` (None: hints are not kept)."""

    async def paced_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            raw = list(message.get("headers", []))
            found = {k.lower(): v for k, v in raw if k.lower() in INTERNAL_RESPONSE_HEADERS}
            if found:
                message = {**message, "headers": [(k, v) for k, v in raw if k.lower() not in found]}
                if learn is not None and _HINT in found and message.get("status") == 429:
                    learn(found[_HINT])
                await _pace(_ms(found.get(_PACE)))
        await send(message)

    return paced_send


def _ms(raw: bytes | None) -> float:
    """A pace header's milliseconds (0 for anything that is not a number)."""
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


async def _pace(ms: float) -> None:
    if 0 < ms <= 1000:
        await asyncio.sleep(ms / 1000)


class _CallerLeft(Exception):
    """The caller hung up before its body was read."""


async def _read_body(receive: Receive, headers: list[tuple[bytes, bytes]], limit: int) -> bytes | None:
    """The whole body; None, with nothing read, when it is chunked or declared over `limit`."""
    declared = dict(headers).get(b"content-length", b"")
    if not declared.isdigit() or int(declared) > limit:
        return None  # not worth holding here
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _CallerLeft
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, error: ApiError, pace_ms: float, headers: list[tuple[bytes, bytes]]) -> None:
    """The 429 the Ingress would have given, after its pace; with Ray's `X-Request-ID` like every
    response through the proxy (the caller's own id when it sent one)."""
    await _pace(pace_ms)
    # starlette's JSONResponse encoding, so the body is byte for byte the Ingress's
    body = json.dumps(error.body(), ensure_ascii=False, separators=(",", ":")).encode()
    request_id = dict(headers).get(b"x-request-id") or str(uuid.uuid4()).encode()
    await send_json(send, 429, body, [(b"retry-after", str(error.retry_after).encode()), (b"x-request-id", request_id)])
