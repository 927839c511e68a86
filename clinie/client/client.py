"""`Client` and `AsyncClient`: the same two calls over HTTP and gRPC, with bounded retries.

    with Client("http://127.0.0.1:8000", api_key="...") as c:
        result = c.extract("Denies chest pain.", note_id="n1", policy="fast-only")
        results = c.extract_batch(["note one", {"note_id": "n2", "text": "note two"}])

Only the service's "later" answers are retried (429 and 503, and a connection that cannot be made),
at most `retries` times, waiting what `Retry-After` says (else backing off); everything else, 4xx
above all, raises ClinieError at once. A batch is sent `batch_size` notes a request, in order; a
bad note's slot holds its `{"note_id", "error"}` and the other notes are answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from clinie.client.config import ClientConfig, retry_wait
from clinie.client.errors import ClinieError
from clinie.client.transports import make_async_transport, make_transport

Note = str | Mapping[str, Any]
RetryHook = Callable[[ClinieError, float], None]
"""Called before each retry with the refusal and the seconds about to be waited."""


def _one_body(text: str, note_id: str | None, policy: str | None, deadline_ms: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"text": text}
    if note_id is not None:
        body["note_id"] = note_id
    if policy is not None:
        body["policy"] = policy
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    return body


def _batch_bodies(
    notes: Iterable[Note], policy: str | None, deadline_ms: float | None, size: int
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i, note in enumerate(notes):
        if isinstance(note, str):
            items.append({"text": note})
        elif isinstance(note, Mapping) and "text" in note:
            items.append({k: note[k] for k in ("text", "note_id") if k in note})
        else:
            raise TypeError(f"notes[{i}] must be a string or a mapping with `text` (and `note_id`)")
    bodies = []
    for start in range(0, len(items), size):
        body: dict[str, Any] = {"notes": items[start : start + size]}
        if policy is not None:
            body["policy"] = policy
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        bodies.append(body)
    return bodies


def _attempt_timeout(cfg: ClientConfig, deadline_ms: float | None) -> float:
    # The service answers an overtaken deadline with an explicit 504 at the deadline; a second of
    # slack lets that answer arrive rather than the client giving up a moment before it.
    if deadline_ms is None:
        return cfg.timeout
    return min(cfg.timeout, deadline_ms / 1000 + 1.0)


class _Base:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        *,
        on_retry: RetryHook | None = None,
        **options: Any,
    ) -> None:
        self.config = ClientConfig(url=url, api_key=api_key, timeout=timeout, retries=retries, **options)
        self.on_retry = on_retry
        self.retried = 0
        """Retries made by this client so far (all calls)."""

    def _should_retry(self, err: ClinieError, attempt: int) -> float | None:
        """The wait before the next attempt, or None when `err` is final."""
        err.attempts = attempt
        if not err.retryable or attempt > self.config.retries:
            return None
        wait = retry_wait(self.config, attempt, err.retry_after)
        self.retried += 1
        if self.on_retry is not None:
            self.on_retry(err, wait)
        return wait


class Client(_Base):
    """Blocking client for `http://`, `https://`, `grpc://` and `grpcs://` URLs (see ClientConfig
    for the keyword options: `max_retry_wait`, `backoff`, `batch_size`)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0, retries: int = 3, **kw: Any):
        super().__init__(url, api_key, timeout, retries, **kw)
        self._transport = make_transport(self.config)

    def _send(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._transport.send(kind, body, timeout)
            except ClinieError as err:
                wait = self._should_retry(err, attempt)
                if wait is None:
                    raise
                time.sleep(wait)

    def extract(
        self, text: str, note_id: str | None = None, policy: str | None = None, deadline_ms: float | None = None
    ) -> dict[str, Any]:
        """One note's result (the contract's JSON). Raises ClinieError for a 4xx, or a 429/503
        that outlasted the retries, or a 5xx."""
        body = _one_body(text, note_id, policy, deadline_ms)
        return self._send("one", body, _attempt_timeout(self.config, deadline_ms))

    def extract_batch(
        self, notes: Iterable[Note], policy: str | None = None, deadline_ms: float | None = None
    ) -> list[dict[str, Any]]:
        """Results in the order of `notes` (strings, or mappings with `text` and `note_id`)."""
        results: list[dict[str, Any]] = []
        for body in _batch_bodies(notes, policy, deadline_ms, self.config.batch_size):
            # A batch's notes run concurrently on the service; a per-note deadline bounds the call.
            results.extend(self._send("batch", body, _attempt_timeout(self.config, deadline_ms))["results"])
        return results

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same calls as Client, awaitable; safe to share among many tasks of one event loop."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0, retries: int = 3, **kw: Any):
        super().__init__(url, api_key, timeout, retries, **kw)
        self._transport = make_async_transport(self.config)

    async def _send(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._transport.send(kind, body, timeout)
            except ClinieError as err:
                wait = self._should_retry(err, attempt)
                if wait is None:
                    raise
                await asyncio.sleep(wait)

    async def extract(
        self, text: str, note_id: str | None = None, policy: str | None = None, deadline_ms: float | None = None
    ) -> dict[str, Any]:
        """One note's result (the contract's JSON); see Client.extract."""
        body = _one_body(text, note_id, policy, deadline_ms)
        return await self._send("one", body, _attempt_timeout(self.config, deadline_ms))

    async def extract_batch(
        self, notes: Iterable[Note], policy: str | None = None, deadline_ms: float | None = None
    ) -> list[dict[str, Any]]:
        """Results in the order of `notes`; see Client.extract_batch."""
        results: list[dict[str, Any]] = []
        for body in _batch_bodies(notes, policy, deadline_ms, self.config.batch_size):
            results.extend((await self._send("batch", body, _attempt_timeout(self.config, deadline_ms)))["results"])
        return results

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
