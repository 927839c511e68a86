"""The LLM tier as a Ray Serve deployment: one replica owns one vLLM engine.

For tensor parallelism the application gives this deployment `placement_group_bundles` of one
GPU each (TP=N: N bundles, `STRICT_PACK`, so all N GPUs sit on one node); vLLM's workers run in
that placement group. On CPU it is one bundle with the engine's CPUs.

The engine starts in the background: the constructor returns at once, so a tier that is slow to
start, or fails, never blocks the application from coming up. `status()` says `starting`,
`ready` or `failed` with the reason, which `/readyz` reports; requests before `ready` raise
`LLMUnavailable` at once instead of queueing.

Why not Ray Serve LLM's `build_llm_deployment`: the router needs the two-step markup
extraction with a deadline per note and abort on cancel inside the replica, next to the engine;
the OpenAI-style server would add an HTTP-shaped hop per prompt and a second deadline to keep
consistent. Placement, TP and autoscaling are the same Serve primitives it uses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from typing import Any

from ray import serve

from clinie.errors import LLMUnavailable
from clinie.schema import NoteResult
from deployments.llm_tier.config import LLMTierConfig
from deployments.priority import lower_priority

log = logging.getLogger(__name__)

ENGINE_DEATH_EXIT_S = 1.0
"""Seconds between noticing the engine's death and this replica's exit (see `_engine_died`)."""


@serve.deployment(name="LLMTier")
class LLMTierDeployment:
    """`extract(note_id, text, ranges, timeout_s, reason)` -> NoteResult from the LLM tier."""

    def __init__(self, config: dict[str, Any], nice: int = 0):
        lower_priority(nice)  # before the engine's threads and processes start: they inherit it
        self.cfg = LLMTierConfig.model_validate(config)
        self._state = "starting"
        self._error = ""
        self._engine_dead = False  # the engine's process died after it started: replace this replica
        self._tier: Any = None
        self._engine: Any = None
        self._in_flight = 0
        self._latencies: deque[float] = deque(maxlen=64)
        self._task = asyncio.get_event_loop().create_task(self._start())

    async def _start(self) -> None:
        t0 = time.perf_counter()
        try:
            from deployments.llm_tier.engine import open_llm_tier

            # Built in a worker thread so this replica's event loop keeps answering (status,
            # health checks) during the slow start; vLLM's AsyncLLM then starts its output handler
            # on this loop at the first request.
            self._engine, self._tier = await asyncio.to_thread(open_llm_tier, self.cfg)
            self._state = "ready"
            log.info("LLM tier ready in %.1f s", time.perf_counter() - t0)
        except Exception as exc:  # reported by /readyz; the application keeps serving the fast tier
            self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"[:500]
            log.error("LLM tier failed to start: %s", self._error)

    def _engine_died(self) -> bool:
        """A ready engine whose own processes died (killed, out of memory): this replica can no
        longer answer; its health check fails so that Serve replaces it with a fresh engine."""
        if self._state == "ready" and self._engine is not None and getattr(self._engine, "dead", False):
            self._state, self._error = "failed", "the LLM engine's process died; the replica is being replaced"
            self._engine_dead = True
            log.error("LLM engine died; this replica exits so that Serve replaces it")
            # Exit rather than wait for Serve to count three failed health checks (about 25 s at
            # the default 10 s period, measured): the controller replaces a replica whose actor died
            # at once. The engine is gone, so nothing this replica holds can still be answered; the
            # second's grace lets the status call that noticed reach the Ingress first. The failing
            # health check below stays as the fallback.
            threading.Timer(ENGINE_DEATH_EXIT_S, os._exit, args=(1,)).start()
        return self._engine_dead

    def status(self) -> dict[str, Any]:
        """`state` (starting/ready/failed), `error`, `model`, `in_flight` and recent p50 latency."""
        self._engine_died()  # routing stops sending work here at once
        lat = sorted(self._latencies)
        return {
            "state": self._state,
            "error": self._error,
            "model": self._engine.model_tag if self._engine is not None else "",
            "in_flight": self._in_flight,
            "p50_ms": lat[len(lat) // 2] if lat else None,
        }

    async def extract(
        self,
        note_id: str | None,
        text: str,
        ranges: list[tuple[int, int]] | None = None,
        timeout_s: float | None = None,
        reason: str = "policy:llm-only",
    ) -> NoteResult:
        if self._state != "ready":
            raise LLMUnavailable(f"LLM tier is {self._state}" + (f": {self._error}" if self._error else ""))
        self._in_flight += 1
        t0 = time.perf_counter()
        try:
            result = await self._tier.extract(note_id, text, timeout_s=timeout_s, reason=reason, ranges=ranges)
            self._latencies.append((time.perf_counter() - t0) * 1000)
            return result
        except Exception:
            self._engine_died()  # a request is the first to see a dead engine: act on it now
            raise
        finally:
            self._in_flight -= 1

    def check_health(self) -> None:
        # An engine that failed to start is reported, not restarted in a loop: restarting would
        # hide the reason. One that died after starting is replaced (the fault is not the config's).
        if self._engine_died():
            raise RuntimeError("LLM engine died")
        if self._engine is not None and getattr(self._engine, "engine", None) is None and self._state == "ready":
            raise RuntimeError("LLM engine was shut down")

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # interpreter teardown: nothing left to report to
                pass
