"""The extraction pipeline as `clinie extract` runs it in process: the same router, policies and
orchestration (`serve_app.orchestrate.answer`) as the server, with the engines in this process
(`serve_app.tiers.LocalTiers`).

- The fast tier analyses, in one batched pass, the notes whose policy needs it.
- The router (policies from `--policies`, `$CLINIE_POLICIES`, or the checked-in
  `serve_app/configs/policies.default.yaml`) decides per note.
- The LLM tier's engine is started only when a note is escalated (about 25 s on CPU for the
  default model); without vLLM installed, escalations are answered by the fast tier with
  `route.reason = "llm_tier_unavailable"`.
- A policy that does not need the fast pass (`llm-only`) sends every note straight to the LLM
  tier and loads no fast model; a note the LLM tier cannot answer gets an explicit error
  (`llm_timeout`, ...) in its slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from clinie.analysis import NoteAnalysis
from clinie.inputs import NoteInput
from clinie.ood import OOD_FILE
from clinie.paths import policies_path
from clinie.schema import ErrorBody, NoteError, NoteResult
from clinie.validation import partition_notes
from deployments.fast_tier.config import EngineConfig, SpanFloor
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.engine import FastTierEngine
from deployments.llm_tier.config import LLMTierConfig
from router import Router, RouterConfig, UnknownPolicy, load_router_config
from router.host import RouterHost
from serve_app.orchestrate import LLMFailure, answer
from serve_app.tiers import LocalTiers, llm_available


class PolicyError(ValueError):
    """An unknown policy, or one this build cannot serve; `code` is the wire error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def load_router(explicit: str | Path | None = None) -> Router:
    return Router(load_router_config(policies_path(explicit)))


class Pipeline:
    """Fast tier + router (+ LLM tier on escalation) over notes, in process."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        precision: str = "int8",
        batch_size: int = 16,
        llm: LLMTierConfig | None = None,
        router: Router | RouterConfig | None = None,
        threads: int = 0,
        span_floor: SpanFloor | None = None,
    ):
        self._fast_args = (model_dir, precision, batch_size, threads, span_floor or SpanFloor())
        self.max_note_chars: int = EngineConfig.model_fields["max_note_chars"].default
        self._fast: FastTierEngine | None = None
        self.llm_cfg = llm or LLMTierConfig()
        if isinstance(router, RouterConfig):
            router = Router(router)
        self.router = router or load_router()

    @property
    def fast(self) -> FastTierEngine:
        if self._fast is None:  # resolved on first use: llm-only runs need no fast-tier model
            model_dir, precision, batch_size, threads, span_floor = self._fast_args
            cfg = EngineConfig(
                model_dir=resolve_model_dir(model_dir),
                precision=precision,  # type: ignore[arg-type]
                batch_size=batch_size,
                intra_op_threads=threads,
                span_floor=span_floor,
            )
            self._fast = FastTierEngine(cfg)
        return self._fast

    def check_policy(self, name: str | None) -> str:
        """The policy a run gets; PolicyError for an unknown one, or for one that needs the LLM
        tier alone (no fast pass to fall back on) when vLLM is not installed."""
        try:
            chosen = self.router.check(name)
        except UnknownPolicy as exc:
            raise PolicyError("unknown_policy", exc.message) from None
        if not self.router.needs_fast_pass(chosen) and not llm_available():
            msg = f"policy '{chosen}' needs the LLM tier (vllm), which is not installed"
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
        results = asyncio.run(self._run([(nid, text) for _, nid, text in valid], chosen, progress))
        for (i, _, _), r in zip(valid, results, strict=True):
            slots[i] = r
        return [s for s in slots if s is not None]

    def _tiers(self, analysed: bool) -> LocalTiers:
        # OOD statistics sit beside the fast model; a run that never loads it routes without them.
        ood = self.fast.cfg.model_dir / OOD_FILE if analysed else None
        # the router compares these with its policy file's `calibrated_for`: a gain measured on
        # other models is not acted on (the LLM id is known without starting its engine)
        self.router.set_running_models(fast=self.fast.model_tag if analysed else None, llm=self.llm_cfg.model_id)
        return LocalTiers(RouterHost(ood, self.router), self.llm_cfg)

    async def _run(
        self, notes: list[tuple[str | None, str]], policy: str, progress: bool
    ) -> list[NoteResult | NoteError]:
        t0 = time.perf_counter()
        analysed = self.router.needs_fast_pass(policy)
        # One batched fast pass over every note (far cheaper than one call per note). A policy
        # that skips it (llm-only) runs without a fast model: an LLM failure is the note's error.
        analyses = self.fast.analyze(notes, progress=progress) if analysed else [None] * len(notes)
        tiers = self._tiers(analysed)

        async def one(note_id: str | None, text: str, done: NoteAnalysis | None) -> NoteResult | NoteError:
            async def fast_pass() -> NoteAnalysis:
                assert done is not None
                return done

            try:
                return await answer(tiers, note_id, text, policy, fast_pass if done else None, started=t0)
            except LLMFailure as exc:
                return NoteError(note_id=note_id, error=ErrorBody(code=exc.reason, message=exc.message))

        try:
            return list(
                await asyncio.gather(*(one(nid, text, a) for (nid, text), a in zip(notes, analyses, strict=True)))
            )
        finally:
            tiers.shutdown()
