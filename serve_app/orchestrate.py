"""One note through the tiers: fast pass -> router decision -> (maybe) LLM tier -> merge
(`answer`; `finish` is the part after the fast pass).

The same code answers `clinie extract` in process and every request of the served application;
only the `Tiers` behind it differ (engines in this process, or Ray Serve deployment handles).
Whatever the LLM tier does (times out, is absent, overloaded or failing), the note is answered
from the fast tier and `route.reason` says why; the fault is never silent and never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from clinie.analysis import NoteAnalysis, analysis_to_result
from clinie.schema import NoteResult, Route
from router.merge import merge_results
from router.policies import Decision
from router.router import LoadState

log = logging.getLogger(__name__)


class LLMFailure(Exception):
    """What a `Tiers.llm_extract` raises when the LLM tier did not answer; `reason` goes into
    `route.reason` of the fast-tier answer (`llm_timeout`, `llm_overloaded`, ...), `message` (our
    own words, never the note's) into an error where there is no fast answer to give."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason


class Tiers(Protocol):
    """The tiers and the router as the orchestration sees them (`serve_app.tiers`)."""

    def load(self) -> LoadState: ...

    def needs_fast_pass(self, policy: str | None) -> bool: ...

    async def route(
        self, note: NoteAnalysis | str, policy: str | None, load: LoadState, deadline_ms: float | None
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


def _left(deadline_ms: float | None, t0: float) -> float | None:
    return None if deadline_ms is None else deadline_ms - (time.perf_counter() - t0) * 1000


async def answer(
    tiers: Tiers,
    note_id: str | None,
    text: str,
    policy: str | None,
    fast_pass: Callable[[], Awaitable[NoteAnalysis]] | None,
    deadline_ms: float | None = None,
    started: float | None = None,
) -> NoteResult:
    """One validated note, start to end: the one path `clinie extract` and the service share.

    A policy that decides on the fast tier's analysis gets it first (`fast_pass`), then `finish`.
    One that does not (llm-only) sends the note straight to the LLM tier. Where a fast tier is at
    hand (`fast_pass` given) its pass runs alongside, so that the fallback answer, should the LLM
    tier not answer, is ready inside the deadline; without one (`clinie extract --policy
    llm-only` loads no fast model) the LLMFailure is raised. Raises router.UnknownPolicy for an
    unknown policy name.
    """
    t0 = started if started is not None else time.perf_counter()
    if tiers.needs_fast_pass(policy):
        if fast_pass is None:
            raise ValueError(f"policy {policy!r} needs the fast pass")
        return await finish(tiers, await fast_pass(), policy, deadline_ms, t0)
    fallback = asyncio.ensure_future(fast_pass()) if fast_pass is not None else None
    if fallback is not None:  # not awaited when the LLM answers: its errors must not go unseen
        fallback.add_done_callback(lambda t: t.cancelled() or t.exception())
    decision, signals, sentences = await tiers.route(text, policy, tiers.load(), _left(deadline_ms, t0))
    signals = {**signals, "sentences": float(len(sentences))}
    reason = decision.reason
    if decision.escalates:
        left = _left(deadline_ms, t0)
        t_llm = time.perf_counter()
        try:
            if left is not None and left <= 0:
                raise LLMFailure("deadline_exceeded", "the deadline passed before the LLM tier was called")
            llm = await tiers.llm_extract(note_id, text, None, None if left is None else left / 1000, reason)
            return _whole_note(llm, decision, signals, {"llm": _ms(t_llm)}, None, t0)
        except LLMFailure as exc:
            if fallback is None:
                raise
            reason = exc.reason
    elif fallback is None:
        raise LLMFailure(reason, f"the LLM tier cannot take the note now ({reason})")
    return _fast_answer(await fallback, reason, signals, t0)


def _fast_answer(analysis: NoteAnalysis, reason: str, signals: dict[str, float], t0: float) -> NoteResult:
    result = analysis_to_result(analysis, Route(tier="bert", escalated=False, reason=reason, signals=signals))
    result.timings_ms["total"] = _ms(t0)
    return result


def _whole_note(
    llm: NoteResult,
    decision: Decision,
    signals: dict[str, float],
    timings: dict[str, float],
    fast_model: str | None,
    t0: float,
) -> NoteResult:
    """The LLM tier's answer for the whole note, with the route that chose it."""
    models = {**({"bert": fast_model} if fast_model else {}), **{k: v for k, v in llm.models.items() if k == "llm"}}
    route = Route(
        tier="llm",
        escalated=True,
        reason=decision.reason,
        signals=_llm_signals(signals, decision, llm, signals.get("sentences", 1.0)),
        escalated_ranges=llm.route.escalated_ranges,  # the LLM tier says what it answered
    )
    result = llm.model_copy(update={"route": route, "models": models, "timings_ms": timings})
    result.timings_ms["total"] = _ms(t0)
    return result


def _llm_signals(signals: dict[str, float], decision: Decision, llm: NoteResult, escalated: float) -> dict[str, float]:
    out = {**signals, "escalated_sentences": float(escalated), "llm_tokens_estimate": round(decision.llm_tokens, 1)}
    out.update({k: v for k, v in llm.route.signals.items() if k.startswith("llm_")})
    return out


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
    decision, signals, sentences = await tiers.route(analysis, policy, tiers.load(), _left(deadline_ms, t0))
    signals = {**signals, "sentences": float(len(sentences))}
    if not decision.escalates:
        return _fast_answer(analysis, decision.reason, signals, t0)

    ranges = None if decision.action == "note" else [sentences[i] for i in decision.sentences]
    left = _left(deadline_ms, t0)
    if left is not None and left <= 0:
        return _fast_answer(analysis, "deadline_exceeded", signals, t0)
    t_llm = time.perf_counter()
    try:
        llm = await tiers.llm_extract(
            analysis.note_id, analysis.text, ranges, None if left is None else left / 1000, decision.reason
        )
    except LLMFailure as exc:
        return _fast_answer(analysis, exc.reason, signals, t0)
    timings = {"bert": round(analysis.elapsed_ms, 2), "llm": _ms(t_llm)}
    if ranges is None:
        return _whole_note(llm, decision, signals, timings, analysis.model_tag, t0)
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
            signals=_llm_signals(signals, decision, llm, float(len(ranges))),
            escalated_ranges=llm.route.escalated_ranges,
        ),
        models={"bert": analysis.model_tag, **{k: v for k, v in llm.models.items() if k == "llm"}},
        timings_ms=timings,
    )
    result.timings_ms["total"] = _ms(t0)
    return result
