"""One note through the tiers: fast pass -> router decision -> (maybe) LLM tier -> merge.

The same code answers `clinie extract` in process and every request of the served application;
only the `Tiers` behind it differ (engines in this process, or Ray Serve deployment handles).
Whatever the LLM tier does (times out, is absent, overloaded or failing), the note is answered
from the fast tier and `route.reason` says why; the fault is never silent and never a hang.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from clinie.analysis import NoteAnalysis, analysis_to_result
from clinie.schema import NoteResult, Route
from router.merge import merge_results
from router.policies import Decision
from router.router import LoadState

log = logging.getLogger(__name__)


class LLMFailure(Exception):
    """What a `Tiers.llm_extract` raises when the LLM tier did not answer; `reason` goes into
    `route.reason` of the fast-tier answer (`llm_timeout`, `llm_overloaded`, ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Tiers(Protocol):
    """The tiers and the router as the orchestration sees them."""

    def load(self) -> LoadState: ...

    async def route(
        self, analysis: NoteAnalysis, policy: str | None, load: LoadState, deadline_ms: float | None
    ) -> tuple[Decision, dict[str, float], list[tuple[int, int]]]: ...

    async def llm_extract(
        self,
        note_id: str | None,
        text: str,
        ranges: list[tuple[int, int]] | None,
        timeout_s: float | None,
        reason: str,
    ) -> NoteResult: ...


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


async def finish(
    tiers: Tiers,
    analysis: NoteAnalysis,
    policy: str | None,
    deadline_ms: float | None = None,
    started: float | None = None,
) -> NoteResult:
    """Route an analysed note and produce its result (the part after the fast pass).

    `deadline_ms` counts from `started` (perf_counter seconds; default: now). Raises
    router.UnknownPolicy for an unknown policy name.
    """
    t0 = started if started is not None else time.perf_counter()
    remaining = None if deadline_ms is None else deadline_ms - (time.perf_counter() - t0) * 1000
    decision, signals, sentences = await tiers.route(analysis, policy, tiers.load(), remaining)
    signals = {**signals, "sentences": float(len(sentences))}

    def fast_answer(reason: str) -> NoteResult:
        result = analysis_to_result(analysis, Route(tier="bert", escalated=False, reason=reason, signals=signals))
        result.timings_ms["total"] = _ms(t0)
        return result

    if not decision.escalates:
        return fast_answer(decision.reason)

    ranges = None if decision.action == "note" else [sentences[i] for i in decision.sentences]
    remaining = None if deadline_ms is None else deadline_ms - (time.perf_counter() - t0) * 1000
    if remaining is not None and remaining <= 0:
        return fast_answer("deadline_exceeded")
    t_llm = time.perf_counter()
    try:
        llm = await tiers.llm_extract(
            analysis.note_id,
            analysis.text,
            ranges,
            None if remaining is None else remaining / 1000,
            decision.reason,
        )
    except LLMFailure as exc:
        return fast_answer(exc.reason)
    llm_ms = _ms(t_llm)
    route_signals = {
        **signals,
        "escalated_sentences": float(len(ranges) if ranges is not None else len(sentences)),
        "llm_tokens_estimate": round(decision.llm_tokens, 1),
    }
    route_signals.update({k: v for k, v in llm.route.signals.items() if k.startswith("llm_")})
    answered = llm.route.escalated_ranges  # the LLM tier says what it answered
    models = {"bert": analysis.model_tag, **{k: v for k, v in llm.models.items() if k == "llm"}}
    timings = {"bert": round(analysis.elapsed_ms, 2), "llm": llm_ms}
    if ranges is None:
        result = llm.model_copy(
            update={
                "route": Route(
                    tier="llm", escalated=True, reason=decision.reason, signals=route_signals, escalated_ranges=answered
                ),
                "models": models,
                "timings_ms": timings,
            }
        )
    else:
        fast = analysis_to_result(analysis, Route(tier="bert", escalated=False, reason="", signals={}))
        entities, modifiers, relations = merge_results(fast, llm, ranges)
        result = NoteResult(
            note_id=analysis.note_id,
            entities=entities,
            modifiers=modifiers,
            relations=relations,
            route=Route(
                tier="bert+llm",
                escalated=True,
                reason=decision.reason,
                signals=route_signals,
                escalated_ranges=answered,
            ),
            models=models,
            timings_ms=timings,
        )
    result.timings_ms["total"] = _ms(t0)
    return result
