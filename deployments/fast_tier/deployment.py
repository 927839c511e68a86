"""The fast tier as a Ray Serve deployment: one ONNX Runtime engine per replica, requests from
concurrent callers grouped by `@serve.batch` so one engine call (one hop to the worker thread)
serves several notes. Inside it each note's windows run in batches of their own: a note's answer
never depends on what else arrived with it (FastTierEngine._tag_windows says why).

Answers are compact analyses (`NoteAnalysis.compact`): the router's per-token evidence instead
of the probability matrices, so a typical one travels inline in Ray's reply.

The batch runs in a worker thread: ONNX Runtime releases the GIL, and the replica's event loop
stays free to accept the next batch while this one computes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ray import serve

from clinie.analysis import NoteAnalysis
from deployments.fast_tier.config import EngineConfig, SpanFloor
from deployments.fast_tier.engine import FastTierEngine
from deployments.priority import lower_priority

# Largest number of notes grouped into one engine call; the engine further batches windows.
MAX_BATCH_NOTES = 8


@serve.deployment(name="FastTier")
class FastTierDeployment:
    """`analyze(note_id, text)` -> NoteAnalysis (text already validated by the caller)."""

    def __init__(
        self,
        model_dir: str,
        precision: str = "int8",
        max_batch_size: int = MAX_BATCH_NOTES,
        batch_wait_timeout_s: float = 0.005,
        threads: int = 0,
        nice: int = 0,
        span_floor: dict[str, float] | None = None,
    ):
        lower_priority(nice)  # first: a starting replica's model load and warm-up yield too
        cfg = EngineConfig(
            model_dir=Path(model_dir),
            precision=precision,  # type: ignore[arg-type]
            intra_op_threads=threads,
            span_floor=SpanFloor.model_validate(span_floor or {}),
        )
        self.engine = FastTierEngine(cfg)
        # One pass before serving: a replica's first ONNX runs are several times slower (memory
        # arenas, kernels), and the ingress measures capacity from the passes it sees.
        self.engine.analyze([(None, "Warm-up: patient denies chest pain; aspirin 81 mg daily.")])
        self.analyze_batch.set_max_batch_size(max_batch_size)
        self.analyze_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=MAX_BATCH_NOTES, batch_wait_timeout_s=0.005)
    async def analyze_batch(self, notes: list[tuple[str | None, str]]) -> list[NoteAnalysis]:
        return await asyncio.to_thread(self._analyze, notes)

    def _analyze(self, notes: list[tuple[str | None, str]]) -> list[NoteAnalysis]:
        # compact(): what the caller's router reads, a fifth of the bytes to pickle and ship
        return [a.compact() for a in self.engine.analyze(notes)]

    async def analyze(self, note_id: str | None, text: str) -> NoteAnalysis:
        return await self.analyze_batch((note_id, text))

    def info(self) -> dict[str, str]:
        """Model tag and directory, for /readyz and result `models`."""
        return {"model": self.engine.model_tag, "model_dir": str(self.engine.cfg.model_dir)}
