"""The one orchestration path (`serve_app.orchestrate.answer`) over the Serve-handle adapter
(`serve_app.tiers.HandleTiers`) with the real router and the shipped policy file.

The LLM tier is a stand-in for its deployment handle: the faults it injects (a timeout, a full
queue, a crashing replica) cannot be caused on demand with the real engine, and vLLM is not
needed to test what the orchestration does with them. The integration tests run the real one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.serve.exceptions import BackPressureError

from clinie.analysis import NoteAnalysis, analysis_to_result
from clinie.errors import LLMTimeout, LLMUnavailable
from clinie.paths import DEFAULT_POLICIES
from clinie.schema import NoteResult, Route, TextRange
from router import Router, load_router_config
from router.host import RouterHost
from serve_app.orchestrate import LLMFailure, answer
from serve_app.tiers import HandleTiers, LLMLoad, llm_failure
from tests.unit.test_router_signals import TEXT, analysis


class _Call:
    def __init__(self, outcome: Any):
        self.outcome, self.calls = outcome, []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)

        async def run() -> Any:
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

        return run()


class _LLMHandle:
    """Stands in for the LLM tier's deployment handle (see the module docstring)."""

    def __init__(self, outcome: Any):
        self.extract = _Call(outcome)


def _llm_answer() -> NoteResult:
    route = Route(tier="llm", escalated=True, reason="x", escalated_ranges=[TextRange(start=0, end=len(TEXT))])
    result = analysis_to_result(analysis(), route)
    return result.model_copy(update={"models": {"llm": "smollm2@test"}})


def _tiers(outcome: Any, ready: bool = True) -> tuple[HandleTiers, _LLMHandle | None]:
    router = Router(load_router_config(DEFAULT_POLICIES))
    handle = None if outcome is None else _LLMHandle(outcome)
    return HandleTiers(RouterHost(None, router), handle, LLMLoad(), lambda: ready, 5.0), handle


class _FastPass:
    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self) -> NoteAnalysis:
        self.runs += 1
        return analysis()


def _answer(tiers: HandleTiers, policy: str, fast: _FastPass | None, deadline_ms: float | None = None) -> NoteResult:
    return asyncio.run(answer(tiers, "n1", TEXT, policy, fast, deadline_ms))


def test_fast_only_never_calls_the_llm_tier():
    tiers, handle = _tiers(_llm_answer())
    fast = _FastPass()
    result = _answer(tiers, "fast-only", fast)
    assert fast.runs == 1 and handle is not None and handle.extract.calls == []
    assert result.route.tier == "bert" and result.route.reason == "policy:fast-only"
    assert result.route.signals["sentences"] == 3.0 and "min_token_prob" in result.route.signals


def test_llm_only_goes_straight_to_the_llm_with_the_fast_pass_alongside():
    tiers, handle = _tiers(_llm_answer())
    fast = _FastPass()
    result = _answer(tiers, "llm-only", fast)
    assert handle is not None and len(handle.extract.calls) == 1
    note_id, text, ranges, _timeout, reason = handle.extract.calls[0]
    assert (note_id, text, ranges, reason) == ("n1", TEXT, None, "policy:llm-only")  # the whole note
    assert result.route.tier == "llm" and result.route.reason == "policy:llm-only"
    assert [(r.start, r.end) for r in result.route.escalated_ranges] == [(0, len(TEXT))]
    assert result.models == {"llm": "smollm2@test"} and "llm" in result.timings_ms
    assert fast.runs == 1  # the fallback was started with the LLM call, not after it
    assert tiers.llm_load.in_flight == 0 and len(tiers.llm_load.latencies_ms) == 1


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (LLMTimeout("LLM tier did not answer within 0.0 s"), "llm_timeout"),
        (TimeoutError(), "llm_timeout"),
        (LLMUnavailable("LLM tier is starting"), "llm_tier_unavailable"),
        (BackPressureError(num_queued_requests=4, max_queued_requests=4), "llm_overloaded"),
        (RuntimeError("engine died"), "llm_error"),
    ],
)
def test_an_llm_fault_is_answered_by_the_fast_tier_with_its_reason(fault: BaseException, reason: str):
    tiers, _ = _tiers(fault)
    result = _answer(tiers, "llm-only", _FastPass())
    assert result.route.tier == "bert" and not result.route.escalated
    assert result.route.reason == reason
    result.check_offsets(TEXT)
    assert tiers.llm_load.in_flight == 0 and not tiers.llm_load.latencies_ms  # failures are not latencies


def test_without_a_fast_tier_an_llm_fault_is_the_notes_error():
    tiers, _ = _tiers(LLMTimeout("LLM tier did not answer within 0.0 s"))
    with pytest.raises(LLMFailure) as err:
        _answer(tiers, "llm-only", None)
    assert err.value.reason == "llm_timeout" and "0.0 s" in err.value.message


def test_an_absent_or_unready_llm_tier_is_not_called():
    for outcome, ready in ((None, True), (_llm_answer(), False)):
        tiers, handle = _tiers(outcome, ready)
        result = _answer(tiers, "llm-only", _FastPass())
        assert result.route.reason == "llm_tier_unavailable"
        assert handle is None or handle.extract.calls == []
        with pytest.raises(LLMFailure, match="llm_tier_unavailable"):
            _answer(tiers, "llm-only", None)


def test_a_policy_that_needs_the_fast_pass_refuses_to_run_without_one():
    tiers, _ = _tiers(_llm_answer())
    assert tiers.needs_fast_pass("default") and not tiers.needs_fast_pass("llm-only")
    with pytest.raises(ValueError, match="needs the fast pass"):
        _answer(tiers, "default", None)


def test_failure_mapping_keeps_our_words_and_drops_foreign_ones():
    assert llm_failure(LLMTimeout("LLM tier did not answer within 2.0 s")).message.endswith("2.0 s")
    foreign = llm_failure(RuntimeError("some text from a note"))
    assert foreign.reason == "llm_error" and "note" not in foreign.message


def test_an_llm_engine_that_cannot_start_is_not_started_again_for_every_note():
    """In process (`LocalTiers`), a real start failure (a model folder that does not exist): the
    first escalated note pays for the attempt, the others get that same failure, not a new one."""
    from deployments.llm_tier.config import LLMTierConfig
    from serve_app.tiers import LocalTiers

    router = RouterHost(None, Router(load_router_config(DEFAULT_POLICIES)))
    tiers = LocalTiers(router, LLMTierConfig(model="/nonexistent/llm-model-dir"))

    async def three() -> list[LLMFailure]:
        out = []
        for _ in range(3):
            with pytest.raises(LLMFailure) as err:
                await tiers.llm_extract("n1", TEXT, None, None, "policy:llm-only")
            out.append(err.value)
        return out

    first, *rest = asyncio.run(three())
    assert first.reason == "llm_error" and all(r is first for r in rest)  # one start attempt, one failure
