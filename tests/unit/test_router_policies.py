"""Routing policies' decision tables, the router's load guard, policy lookup, rates and registration."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from router import (
    REGISTRY,
    CostModel,
    Decision,
    LoadState,
    NoteSignals,
    Policy,
    PolicyConfig,
    RouteContext,
    Router,
    UnknownPolicy,
    parse_router_config,
    register,
)

COSTS = {"llm_cost_per_token": 1.0, "chars_per_token": 4.0, "llm_tokens_per_sentence": 100.0}


def signals(
    min_prob: list[float],
    entropy: list[float] | None = None,
    chars: list[int] | None = None,
    ood: float | None = None,
) -> NoteSignals:
    """Signals of a note whose sentences have these lengths, separated by one space."""
    chars = chars or [20 + 4 * i for i in range(len(min_prob))]
    assert len(chars) == len(min_prob)
    ranges, at = [], 0
    for c in chars:
        ranges.append((at, at + c))
        at += c + 1
    per = {"min_token_prob": np.array(min_prob, np.float64)}
    if entropy is not None:
        per["max_entropy"] = np.array(entropy, np.float64)
    note = {"min_token_prob": float(min(min_prob))}
    if ood is not None:
        note["ood_mahalanobis"] = ood
    return NoteSignals(sentences=ranges, sentence_chars=list(chars), per_sentence=per, note=note)


def router(policies: dict, default: str = "p", load: dict | None = None) -> Router:
    raw = {"default_policy": default, "policies": policies, "costs": COSTS}
    if load is not None:
        raw["load"] = load
    return Router(parse_router_config(raw))


def threshold(**kw) -> dict:
    return {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5, **kw}


def tokens(sig: NoteSignals, chosen: list[int]) -> float:
    return CostModel(**COSTS).llm_tokens([sig.sentence_chars[i] for i in chosen])


# --- built-in policies ---------------------------------------------------------------------------


def test_fast_only_answers_from_the_fast_tier_even_when_uncertain():
    r = router({}, default="fast-only")
    d = r.decide(signals([0.01, 0.02], ood=99.0))
    assert d == Decision(action="fast", reason="policy:fast-only", sentences=[], llm_tokens=0.0)
    assert not d.escalates


def test_llm_only_sends_the_whole_note_with_its_token_estimate():
    r = router({}, default="llm-only")
    sig = signals([0.99, 0.99, 0.99], chars=[40, 80, 12])
    d = r.decide(sig)
    assert d.action == "note" and d.escalates
    assert d.reason == "policy:llm-only"
    assert d.sentences == []
    assert d.llm_tokens == pytest.approx(3 * 100 + 3 * (40 + 80 + 12) / 4)


def test_threshold_lower_is_riskier_flags_sentences_below():
    r = router({"p": threshold(threshold=0.5)})
    sig = signals([0.9, 0.3, 0.5, 0.1, 0.7])  # 0.5 is on the threshold: not flagged (strict)
    d = r.decide(sig)
    assert d.action == "sentences"
    assert d.sentences == [1, 3]
    assert d.reason == "low_confidence"
    assert d.llm_tokens == pytest.approx(tokens(sig, [1, 3]))


def test_threshold_higher_is_riskier_flags_sentences_above():
    r = router({"p": {"kind": "threshold", "signal": "max_entropy", "threshold": 1.0}})
    sig = signals([0.1, 0.1, 0.1, 0.1], entropy=[0.2, 1.5, 1.0, 2.3])  # min_prob would flag all
    d = r.decide(sig)
    assert d.action == "sentences"
    assert d.sentences == [1, 3]
    assert d.llm_tokens == pytest.approx(tokens(sig, [1, 3]))


@pytest.mark.parametrize(
    ("signal", "values"),
    [("min_token_prob", [0.9, 0.6, 0.51]), ("max_entropy", [0.1, 0.4, 0.5])],
)
def test_threshold_with_nothing_flagged_is_confident(signal, values):
    thr = 0.5
    r = router({"p": {"kind": "threshold", "signal": signal, "threshold": thr}})
    sig = signals(values, entropy=values)
    d = r.decide(sig)
    assert d == Decision(action="fast", reason="confident")


def test_threshold_all_flagged_sends_the_whole_note_by_default():
    r = router({"p": threshold(threshold=0.5)})
    sig = signals([0.1, 0.2, 0.3])
    d = r.decide(sig)
    assert d.action == "note" and d.sentences == []
    assert d.reason == "low_confidence"
    assert d.llm_tokens == pytest.approx(tokens(sig, [0, 1, 2]))


@pytest.mark.parametrize(
    ("values", "action"),
    [
        ([0.1, 0.9, 0.9, 0.9], "sentences"),  # 1/4 < 0.5
        ([0.1, 0.1, 0.9, 0.9], "note"),  # 2/4 >= 0.5
        ([0.1, 0.1, 0.1, 0.9], "note"),
    ],
)
def test_threshold_whole_note_fraction(values, action):
    r = router({"p": threshold(whole_note_fraction=0.5)})
    assert r.decide(signals(values)).action == action


def test_threshold_note_scope_sends_the_whole_note_for_one_flagged_sentence():
    r = router({"p": threshold(scope="note")})
    sig = signals([0.9, 0.2, 0.9, 0.9])
    d = r.decide(sig)
    assert d.action == "note" and d.reason == "low_confidence"
    assert d.llm_tokens == pytest.approx(tokens(sig, [0, 1, 2, 3]))
    assert r.decide(signals([0.9, 0.9])).reason == "confident"


@pytest.mark.parametrize(
    ("ood", "ood_threshold", "expected"),
    [
        (5.0, 3.0, ("note", "out_of_distribution")),
        (3.0, 3.0, ("fast", "confident")),  # not above
        (2.0, 3.0, ("fast", "confident")),
        (None, 3.0, ("fast", "confident")),  # no OOD stats for this model
        (50.0, None, ("fast", "confident")),  # OOD check off
    ],
)
def test_threshold_ood_escalates_the_whole_note(ood, ood_threshold, expected):
    r = router({"p": threshold(ood_threshold=ood_threshold)})
    sig = signals([0.9, 0.95, 0.99], ood=ood)  # every sentence confident
    d = r.decide(sig)
    assert (d.action, d.reason) == expected
    if d.action == "note":
        assert d.llm_tokens == pytest.approx(tokens(sig, [0, 1, 2]))


def test_threshold_ood_takes_precedence_over_partial_escalation():
    r = router({"p": threshold(ood_threshold=1.0)})
    assert r.decide(signals([0.1, 0.9], ood=4.0)).reason == "out_of_distribution"


def test_threshold_on_a_missing_signal_answers_fast():
    r = router({"p": {"kind": "threshold", "signal": "max_energy", "threshold": -5.0}})
    d = r.decide(signals([0.0, 0.0]))  # no max_energy (model exported without logsumexp)
    assert d == Decision(action="fast", reason="signal_unavailable")


def test_budget_pays_escalations_until_the_bucket_is_empty():
    # each note: one 40-char sentence flagged -> 100 + 3 * 40 / 4 = 130 tokens = 130 cost units
    r = router(
        {
            "inner": threshold(),
            "p": {"kind": "budget", "inner": "inner", "rate_per_minute": 0, "burst": 300},
        }
    )
    flagged = signals([0.1, 0.9], chars=[40, 40])
    confident = signals([0.9, 0.9], chars=[40, 40])
    first = r.decide(flagged)
    assert first.action == "sentences" and first.sentences == [0]
    assert first.llm_tokens == pytest.approx(130.0)
    # confident notes spend nothing
    for _ in range(5):
        assert r.decide(confident).reason == "confident"
    assert r.decide(flagged).action == "sentences"  # 260 of 300 spent
    third = r.decide(flagged)
    assert third == Decision(action="fast", reason="budget_exhausted")
    assert r.policies["p"].bucket.level == pytest.approx(40.0)


def test_budget_cost_scales_with_llm_cost_per_token():
    raw = {
        "default_policy": "p",
        "costs": {**COSTS, "llm_cost_per_token": 2.0},
        "policies": {
            "inner": threshold(),
            "p": {"kind": "budget", "inner": "inner", "rate_per_minute": 0, "burst": 300},
        },
    }
    r = Router(parse_router_config(raw))
    flagged = signals([0.1, 0.9], chars=[40, 40])
    assert r.decide(flagged).escalates  # 260
    assert r.decide(flagged).reason == "budget_exhausted"


def test_decision_token_estimate_matches_the_cost_model():
    sig = signals([0.1, 0.9, 0.2, 0.9], chars=[10, 200, 33, 7])
    ctx = RouteContext(signals=sig, costs=CostModel(chars_per_token=3.0, llm_tokens_per_sentence=50.0))
    d = ctx.escalate([2, 0], "x")
    assert d.sentences == [0, 2]
    assert d.llm_tokens == pytest.approx(
        CostModel(chars_per_token=3.0, llm_tokens_per_sentence=50.0).llm_tokens([10, 33])
    )
    assert d.llm_tokens == pytest.approx(2 * 50 + 3 * 43 / 3)
    whole = ctx.escalate([], "x", whole_note=True)
    assert whole.llm_tokens == pytest.approx(4 * 50 + 3 * 250 / 3)


# --- the router's load guard ---------------------------------------------------------------------

ESCALATING = signals([0.1, 0.9])
CONFIDENT = signals([0.9, 0.9])


def test_unavailable_llm_tier_turns_escalations_into_fast():
    r = router({"p": threshold()})
    d = r.decide(ESCALATING, load=LoadState(llm_available=False))
    assert d == Decision(action="fast", reason="llm_tier_unavailable")
    assert r.decide(signals([0.1]), policy="llm-only", load=LoadState(llm_available=False)).reason == (
        "llm_tier_unavailable"
    )


def test_full_llm_queue_is_overloaded():
    r = router({"p": threshold()}, load={"max_llm_queue": 3})
    assert r.decide(ESCALATING, load=LoadState(llm_in_flight=2)).action == "sentences"
    assert r.decide(ESCALATING, load=LoadState(llm_in_flight=3)) == Decision(action="fast", reason="llm_overloaded")
    assert r.decide(ESCALATING, load=LoadState(llm_in_flight=10)).reason == "llm_overloaded"


@pytest.mark.parametrize(
    ("p50", "headroom", "deadline", "reason"),
    [
        (900.0, 1.0, 800.0, "llm_overloaded"),
        (900.0, 1.0, 1000.0, "low_confidence"),
        (600.0, 2.0, 1000.0, "llm_overloaded"),  # 600 * 2 > 1000
        (400.0, 2.0, 1000.0, "low_confidence"),
        (5000.0, 1.0, None, "low_confidence"),  # no deadline: latency is not a limit
        (None, 1.0, 10.0, "low_confidence"),  # no latency measured yet
    ],
)
def test_llm_latency_over_the_deadline_is_overloaded(p50, headroom, deadline, reason):
    r = router({"p": threshold()}, load={"latency_headroom": headroom})
    d = r.decide(ESCALATING, load=LoadState(llm_p50_ms=p50), deadline_ms=deadline)
    assert d.reason == reason
    assert d.escalates == (reason != "llm_overloaded")


@pytest.mark.parametrize(
    "load",
    [LoadState(llm_available=False), LoadState(llm_in_flight=100), LoadState(llm_p50_ms=1e6)],
)
def test_non_escalating_decisions_ignore_load(load):
    r = router({"p": threshold()}, load={"max_llm_queue": 1})
    assert r.decide(CONFIDENT, load=load, deadline_ms=1.0) == Decision(action="fast", reason="confident")
    assert r.decide(ESCALATING, "fast-only", load=load, deadline_ms=1.0).reason == "policy:fast-only"


# --- policy lookup and realized rates ------------------------------------------------------------


def test_check_unknown_policy_lists_known_names():
    r = router({"p": threshold(), "q": threshold(threshold=0.2)})
    with pytest.raises(UnknownPolicy) as exc:
        r.check("nope")
    msg = str(exc.value)
    assert "'nope'" in msg
    for name in ("fast-only", "llm-only", "p", "q"):
        assert name in msg
    assert isinstance(exc.value, KeyError)
    with pytest.raises(UnknownPolicy):
        r.decide(ESCALATING, policy="nope")
    assert r.rates()["notes"] == 0.0  # a refused request is not counted


def test_check_none_is_the_default_policy():
    r = router({"p": threshold(), "q": threshold()}, default="q")
    assert r.check(None) == "q"
    assert r.check("p") == "p"
    assert r.check("llm-only") == "llm-only"
    assert r.decide(ESCALATING).reason == "low_confidence"
    assert r.decide(ESCALATING, "fast-only").reason == "policy:fast-only"


def test_rates_count_realized_decisions():
    r = router({"p": threshold()})
    assert r.rates() == {"notes": 0.0, "note_escalation_rate": 0.0, "sentence_escalation_rate": 0.0}
    r.decide(signals([0.1, 0.9, 0.2, 0.9]))  # 2 of 4 sentences
    r.decide(signals([0.9, 0.9]))  # none of 2
    r.decide(signals([0.9, 0.9, 0.9]), policy="llm-only")  # all 3 (whole note)
    r.decide(signals([0.1]), load=LoadState(llm_available=False))  # guarded: 0 of 1
    rates = r.rates()
    assert rates["notes"] == 4.0
    assert rates["note_escalation_rate"] == pytest.approx(2 / 4)
    assert rates["sentence_escalation_rate"] == pytest.approx((2 + 0 + 3 + 0) / 10)


# --- one method, one name ------------------------------------------------------------------------

CUSTOM_KIND = "test-router-first-n-sentences"


@pytest.fixture
def custom_kind():
    class FirstNConfig(PolicyConfig):
        kind: Literal["test-router-first-n-sentences"] = CUSTOM_KIND
        n: int = 1

    @register(CUSTOM_KIND)
    class FirstN(Policy):
        Config = FirstNConfig

        def decide(self, ctx: RouteContext) -> Decision:
            return ctx.escalate(list(range(self.config.n)), f"first:{self.name}")

    try:
        yield FirstN
    finally:
        REGISTRY.pop(CUSTOM_KIND, None)


def test_custom_policy_registered_by_name_is_usable_from_a_config(custom_kind):
    assert REGISTRY[CUSTOM_KIND] is custom_kind
    r = router({"p": {"kind": CUSTOM_KIND, "n": 2}})
    assert isinstance(r.policies["p"], custom_kind)
    sig = signals([0.99, 0.99, 0.99])
    d = r.decide(sig)
    assert d.action == "sentences" and d.sentences == [0, 1] and d.reason == "first:p"
    assert d.llm_tokens == pytest.approx(tokens(sig, [0, 1]))
    # the router's guards apply to it without it doing anything
    assert r.decide(sig, load=LoadState(llm_available=False)).reason == "llm_tier_unavailable"
    # and its own fields are validated like a built-in's
    with pytest.raises(ValueError, match=r"policies\.p\.m"):
        parse_router_config({"default_policy": "p", "policies": {"p": {"kind": CUSTOM_KIND, "m": 2}}})


def test_custom_policy_can_be_wrapped_by_a_budget(custom_kind):
    r = router(
        {
            "first": {"kind": CUSTOM_KIND},
            "p": {"kind": "budget", "inner": "first", "rate_per_minute": 0, "burst": 150},
        }
    )
    sig = signals([0.9, 0.9], chars=[40, 40])  # 130 tokens per decision
    assert r.decide(sig).reason == "first:first"
    assert r.decide(sig).reason == "budget_exhausted"


def test_registering_a_kind_twice_is_refused(custom_kind):
    with pytest.raises(ValueError, match="already registered"):
        register(CUSTOM_KIND)(custom_kind)
    with pytest.raises(ValueError, match="already registered"):
        register("threshold")(custom_kind)


def test_custom_kind_is_unknown_once_removed(custom_kind):
    REGISTRY.pop(CUSTOM_KIND)
    with pytest.raises(ValueError, match=rf"policies\.p\.kind: unknown kind '{CUSTOM_KIND}'"):
        parse_router_config({"default_policy": "p", "policies": {"p": {"kind": CUSTOM_KIND}}})


def test_budget_is_not_spent_on_escalations_the_load_guard_cancels():
    r = router(
        {"inner": threshold(), "p": {"kind": "budget", "inner": "inner", "rate_per_minute": 0, "burst": 300}},
        load={"max_llm_queue": 2},
    )
    flagged = signals([0.1, 0.9], chars=[40, 40])
    for load in (LoadState(llm_available=False), LoadState(llm_in_flight=5)):
        d = r.decide(flagged, load=load)
        assert d.action == "fast" and d.reason in ("llm_tier_unavailable", "llm_overloaded")
    assert r.policies["p"].bucket.level == pytest.approx(300.0)  # nothing was paid for them
    assert r.decide(flagged).action == "sentences"
    assert r.policies["p"].bucket.level == pytest.approx(170.0)
