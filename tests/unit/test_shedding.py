"""The front door's shed hints (serve_app/shedding.py): built from admission's own refusals, they
refuse only what admission refuses, and less as they age."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from serve_app.admission import Admission, AdmissionConfig, Refusal, Ticket
from serve_app.shedding import ShedHint, decide, refusal_message, retry_after


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def hint_of(refusal: Refusal, ttl_ms: float = 500.0) -> ShedHint:
    assert refusal.ahead_ms is not None and refusal.ms_per_char is not None
    return ShedHint(
        ahead_ms=refusal.ahead_ms,
        ms_per_char=refusal.ms_per_char,
        ttl_ms=ttl_ms,
        pace_ms=150,
        retry_after_s=1,
        default_deadline_ms=30_000,
        max_note_chars=200_000,
        max_body_bytes=8 << 20,
    )


def busy(**cfg: float | bool) -> Admission:
    """One replica at 1000 chars/s with 4000 chars (4 s) in flight, no margins unless asked."""
    base: dict[str, float | bool | None] = {
        "overhead_ms": 0.0,
        "safety": 1.0,
        "tail_margin": 1.0,
        "prior_speed_chars_per_s": None,
        "replica_ramp_s": 0.0,
        "cold_margin": 1.0,
    }
    adm = Admission(AdmissionConfig(**{**base, **cfg}), clock=Clock())
    adm.record(1000, 1000.0)
    adm.set_replicas(running=1, starting=0, max_replicas=2)
    for _ in range(2):
        assert isinstance(adm.admit(1, 2000, deadline_ms=60_000), Ticket)
    return adm


def test_a_deadline_refusal_carries_the_estimate_and_other_refusals_do_not() -> None:
    adm = busy()
    refusal = adm.admit(1, 2000, deadline_ms=5000)  # 4 s ahead + 2 s of its own
    assert isinstance(refusal, Refusal) and refusal.reason == "deadline"
    assert refusal.ahead_ms == pytest.approx(4000)
    assert refusal.ms_per_char == pytest.approx(1.0)
    assert refusal.message == refusal_message(5000)
    capped = Admission(AdmissionConfig(max_in_flight_per_replica=1, prior_speed_chars_per_s=None))
    assert isinstance(capped.admit(1, 10, 1000), Ticket)
    cap = capped.admit(1, 10, 1000)
    assert isinstance(cap, Refusal) and cap.reason == "in_flight_cap" and cap.ahead_ms is None


def test_the_hint_refuses_what_admission_refused_and_ages_towards_admitting() -> None:
    adm = busy()
    refusal = adm.admit(1, 2000, deadline_ms=5000)
    assert isinstance(refusal, Refusal)
    hint = hint_of(refusal)
    assert decide(hint, 0, 2000, 5000) == refusal.retry_after_s  # the same request, the same answer
    assert decide(hint, 0, 500, 5000) is None  # 4.5 s: would be admitted
    assert decide(hint, 0, 2000, 6500) is None  # a longer deadline fits
    assert decide(hint, 300, 2000, 5000) is not None  # 5.7 s after 0.3 s of draining
    assert decide(hint, 499, 1200, 5000) is None  # drained to 3.5 s: 4.7 s fits
    assert decide(hint, 500, 10**5, 5000) is None  # past its ttl: nothing is refused
    # drained completely (the Ingress may be idle, and then admits anything): nothing is refused
    assert decide(hint.model_copy(update={"ahead_ms": 100.0}), 100, 10**5, 5000) is None
    assert decide(hint, -1, 10**5, 5000) is None  # a clock that went back: the Ingress decides


def test_retry_after_is_admissions_rule() -> None:
    assert retry_after(5200, 5000, 1) == 1
    assert retry_after(9100, 5000, 1) == 5
    assert retry_after(9100, 5000, 10) == 10
    assert retry_after(10**9, 5000, 1) == 60
    assert retry_after(math.inf, 5000, 1) == 60  # nothing running or starting


def test_nothing_running_or_starting_gives_no_usable_estimate() -> None:
    adm = busy()
    adm.set_replicas(running=0, starting=0, max_replicas=2)
    refusal = adm.admit(1, 2000, deadline_ms=5000)
    assert isinstance(refusal, Refusal) and refusal.retry_after_s == 60
    assert refusal.ms_per_char is not None and math.isinf(refusal.ms_per_char)


@settings(max_examples=500, deadline=None)
# a queue past replica_start_s with replicas starting: a note long enough to be cleared partly by
# them costs less per character than the running replicas' rate (a hint that charged that rate
# would refuse it)
@example(
    in_flight=[19301, 1132, 15737, 7955, 13248, 13577, 5670],
    refused=12030,
    other=46075,
    deadline=32973,
    other_deadline=46572,
    running=2,
    starting=2,
    overhead=0.0,
    safety=1.0,
)
@given(
    in_flight=st.lists(st.integers(1, 20_000), min_size=1, max_size=8),
    refused=st.integers(1, 20_000),
    other=st.integers(1, 60_000),
    deadline=st.integers(100, 60_000),
    other_deadline=st.integers(100, 60_000),
    running=st.integers(1, 3),
    starting=st.integers(0, 2),
    overhead=st.floats(0, 500),
    safety=st.floats(1, 2),
)
def test_a_hint_never_refuses_what_admission_would_admit(
    in_flight: list[int],
    refused: int,
    other: int,
    deadline: int,
    other_deadline: int,
    running: int,
    starting: int,
    overhead: float,
    safety: float,
) -> None:
    """Whatever the queue, the replicas running and starting (admission's estimate is piecewise:
    starting replicas join after replica_start_s) and the margins: a request the hint refuses at
    once is one admission refuses too, in the same state."""
    adm = Admission(
        AdmissionConfig(
            overhead_ms=overhead, safety=safety, replica_ramp_s=0, cold_margin=1.0, prior_speed_chars_per_s=None
        ),
        clock=Clock(),
    )
    adm.record(1000, 1000.0)
    adm.set_replicas(running=running, starting=starting, max_replicas=running + starting)
    for chars in in_flight:
        adm.admit(1, chars, deadline_ms=10**9)
    refusal = adm.admit(1, refused, deadline_ms=deadline)
    if not isinstance(refusal, Refusal):
        return
    hint = hint_of(refusal)
    if decide(hint, 0, other, other_deadline) is not None:
        assert isinstance(adm.admit(1, other, deadline_ms=other_deadline), Refusal)
