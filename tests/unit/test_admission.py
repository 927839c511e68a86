"""Deadline-aware admission (serve_app/admission.py): refuse only what cannot finish in time."""

from __future__ import annotations

import threading

import pytest

from serve_app.admission import Admission, AdmissionConfig, Refusal, Ticket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _adm(**cfg: float | bool | None) -> Admission:
    base = {
        "overhead_ms": 0.0,
        "safety": 1.0,
        "tail_margin": 1.0,
        "replica_start_s": 10.0,
        "prior_speed_chars_per_s": None,
        "replica_ramp_s": 0.0,
        "cold_margin": 1.0,
    }
    return Admission(AdmissionConfig(**{**base, **cfg}), clock=Clock())


def test_idle_service_admits_anything_within_the_cap() -> None:
    adm = _adm()
    adm.record(1000, 1000.0)  # 1000 chars/s per replica
    # 100,000 chars would take 100 s, yet on an idle service its own length is its service time.
    assert isinstance(adm.admit(1, 100_000, deadline_ms=1000), Ticket)


def test_before_any_measurement_only_the_cap_applies() -> None:
    adm = _adm(max_in_flight_per_replica=3)
    adm.set_replicas(running=1, starting=0, max_replicas=1)
    for _ in range(3):
        assert isinstance(adm.admit(1, 10**6, deadline_ms=1), Ticket)
    refusal = adm.admit(1, 1, deadline_ms=10**6)
    assert isinstance(refusal, Refusal) and refusal.reason == "in_flight_cap"


def test_a_cold_ingress_starts_from_the_prior_speed() -> None:
    adm = _adm(prior_speed_chars_per_s=1000.0, speed_halflife_s=1.0)
    adm.set_replicas(running=1, starting=0, max_replicas=1)
    assert adm.speed == 1000.0
    assert isinstance(adm.admit(1, 2000, deadline_ms=3000), Ticket)
    assert isinstance(adm.admit(1, 2000, deadline_ms=3000), Refusal)  # 4 s at the prior: refused
    adm.record(100, 1000.0)  # one cold first pass, 10x slower, moves the estimate only part way
    assert adm.speed is not None and 100 < adm.speed < 1000
    for _ in range(10):  # sustained measurements win
        adm.record(4000, 1000.0)
    assert adm.speed == pytest.approx(4000, rel=0.01)
    assert isinstance(adm.admit(1, 2000, deadline_ms=3000), Ticket)


def test_each_ingress_replica_counts_only_its_share_of_the_fast_tier() -> None:
    # Two ingress replicas share one fast-tier replica of 1000 chars/s: each sees only its own
    # admitted work, so each may count on 500 chars/s. The same queue that fits 5 s alone does not.
    shared = _adm()
    shared.record(1000, 1000.0)
    shared.set_replicas(running=1, starting=0, max_replicas=1, ingress_replicas=2)
    assert shared.snapshot()["ingress_replicas"] == 2
    assert isinstance(shared.admit(1, 1000, deadline_ms=5000), Ticket)  # idle: admitted
    assert isinstance(shared.admit(1, 1000, deadline_ms=5000), Ticket)  # 2000 chars at 500/s: 4 s
    refusal = shared.admit(1, 1000, deadline_ms=5000)  # 6 s at its share
    assert isinstance(refusal, Refusal) and refusal.reason == "deadline"
    assert shared.estimate_s(0) == pytest.approx(4.0)
    # Alone (or with the share switched off) the same 3000 chars take 3 s and fit.
    alone = _adm(share_by_ingress_replicas=False)
    alone.record(1000, 1000.0)
    alone.set_replicas(running=1, starting=0, max_replicas=1, ingress_replicas=2)
    for _ in range(3):
        assert isinstance(alone.admit(1, 1000, deadline_ms=5000), Ticket)
    # The count follows the controller: back to one ingress, the whole fast tier is ours again.
    shared.set_replicas(running=1, starting=0, max_replicas=1, ingress_replicas=1)
    assert shared.estimate_s(0) == pytest.approx(2.0)
    shared.set_replicas(running=1, starting=0, max_replicas=1, ingress_replicas=0)  # never below one
    assert shared.estimate_s(0) == pytest.approx(2.0)


def test_refuses_exactly_when_the_queue_would_miss_the_deadline() -> None:
    adm = _adm()
    adm.record(1000, 1000.0)
    adm.set_replicas(running=1, starting=0, max_replicas=2)
    assert isinstance(adm.admit(1, 2000, deadline_ms=5000), Ticket)  # idle: admitted (2 s)
    assert isinstance(adm.admit(1, 2000, deadline_ms=5000), Ticket)  # 4 s of work with it: fits 5 s
    refusal = adm.admit(1, 2000, deadline_ms=5000)  # 6 s: does not fit
    assert isinstance(refusal, Refusal) and refusal.reason == "deadline"
    assert refusal.retry_after_s >= 1
    # A longer deadline for the same work is admitted: the queue is allowed to form.
    assert isinstance(adm.admit(1, 2000, deadline_ms=7000), Ticket)
    assert adm.in_flight_notes == 3 and adm.in_flight_chars == 6000


def test_a_second_running_replica_doubles_what_fits_once_ramped_in() -> None:
    clock = Clock()
    adm = Admission(
        AdmissionConfig(
            cold_margin=1.0,
            overhead_ms=0.0,
            safety=1.0,
            tail_margin=1.0,
            prior_speed_chars_per_s=None,
            replica_ramp_s=10,
        ),
        clock=clock,
    )
    adm.record(1000, 1000.0)
    adm.set_replicas(running=2, starting=0, max_replicas=2)
    assert adm.snapshot()["counted_replicas"] == 1.0  # just joined: not counted yet
    clock.t = 5.0
    assert adm.estimate_s(6000) == pytest.approx(4.0)  # half-way: 1.5 replicas
    clock.t = 10.0
    for _ in range(4):  # 8,000 chars at 2 x 1000 chars/s = 4 s
        assert isinstance(adm.admit(1, 2000, deadline_ms=4000), Ticket)
    assert isinstance(adm.admit(1, 2000, deadline_ms=4000), Refusal)
    adm.set_replicas(running=1, starting=0, max_replicas=2)  # one gone: gone at once
    assert adm.snapshot()["counted_replicas"] == 1.0


def test_starting_replicas_count_only_when_their_start_fits_the_deadline() -> None:
    adm = _adm(replica_start_s=5.0)
    adm.record(1000, 1000.0)
    adm.set_replicas(running=1, starting=1, max_replicas=2)
    assert isinstance(adm.admit(1, 1000, deadline_ms=60_000), Ticket)
    # 20,000 more chars: one replica alone needs 21 s; with the second from t=5 s,
    # 5,000 by then + 16,000 at 2,000/s = 13 s.
    assert adm.estimate_s(20_000) == pytest.approx(13.0)
    assert isinstance(adm.admit(1, 20_000, deadline_ms=14_000), Ticket)
    # A deadline shorter than the start gets no help from the starting replica.
    assert isinstance(adm.admit(1, 4_000, deadline_ms=4_000), Refusal)


def test_release_frees_the_queue_and_cap_scales_with_max_replicas() -> None:
    adm = _adm(max_in_flight_per_replica=2)
    adm.set_replicas(running=1, starting=0, max_replicas=3)
    assert adm.cap == 6
    for _ in range(6):
        assert isinstance(adm.admit(1, 10, deadline_ms=1000), Ticket)
    assert isinstance(adm.admit(1, 10, deadline_ms=1000), Refusal)
    adm.release(1, 10)
    assert isinstance(adm.admit(1, 10, deadline_ms=1000), Ticket)
    for _ in range(10):  # more releases than admissions never go negative
        adm.release(1, 10)
    assert adm.in_flight_notes == 0 and adm.in_flight_chars == 0


def test_speed_follows_a_slower_replica() -> None:
    adm = _adm(speed_halflife_s=1.0)
    adm.record(1000, 1000.0)
    for _ in range(20):  # the replica got twice as slow (a neighbour took half its core)
        adm.record(500, 1000.0)
    assert adm.speed is not None and adm.speed == pytest.approx(500, rel=0.01)
    adm.record(0, 10.0)  # nothing to learn from empty or instant passes
    adm.record(10, 0.0)
    assert adm.speed == pytest.approx(500, rel=0.01)


def test_safety_and_overhead_make_it_stricter() -> None:
    loose, strict = _adm(), _adm(safety=2.0, overhead_ms=500.0)
    for adm in (loose, strict):
        adm.record(1000, 1000.0)
        adm.admit(1, 1000, deadline_ms=10_000)
    assert isinstance(loose.admit(1, 1000, deadline_ms=2100), Ticket)
    assert isinstance(strict.admit(1, 1000, deadline_ms=2100), Refusal)


def test_requests_slower_than_predicted_tighten_admission_and_recover() -> None:
    clock = Clock()
    adm = Admission(
        AdmissionConfig(
            cold_margin=1.0,
            overhead_ms=0.0,
            safety=1.0,
            tail_margin=1.0,
            prior_speed_chars_per_s=1000.0,
            slowdown_alpha=0.5,
        ),
        clock=clock,
    )
    adm.set_replicas(running=1, starting=0, max_replicas=1)
    first = adm.admit(1, 1000, deadline_ms=10_000)
    assert isinstance(first, Ticket) and first.predicted_s == pytest.approx(1.0)
    # 2,000 more chars queued behind 1,000: 3 s predicted, fits a 3.5 s deadline
    second = adm.admit(1, 2000, deadline_ms=3500)
    assert isinstance(second, Ticket)
    for t in (first, second):  # left at once (as predicted or faster): the mean does not rise
        adm.done(t)
    adm.release(2, 3000)
    # the CPU is shared with the proxy and the clients: requests take 3x what compute predicts
    for _ in range(8):
        t = adm.admit(1, 1000, deadline_ms=10_000)
        assert isinstance(t, Ticket)
        clock.t += 3.0 * (t.predicted_s or 0)
        adm.done(t)
        adm.release(1, 1000)
    assert adm.slowdown == pytest.approx(3.0, rel=0.02)
    held = adm.admit(1, 1000, deadline_ms=10_000)
    assert isinstance(held, Ticket)
    # the same 2,000 chars behind it now refused: about 9 s, not 3
    refusal = adm.admit(1, 2000, deadline_ms=3500)
    assert isinstance(refusal, Refusal) and refusal.reason == "deadline"
    adm.done(held)  # finished at once: predicted 1 s, took 0 -> clamped ratio, the slowdown falls
    adm.release(1, 1000)
    for _ in range(8):  # contention gone: requests take what was predicted
        t = adm.admit(1, 1000, deadline_ms=10_000)
        assert isinstance(t, Ticket)
        clock.t += t.predicted_s or 0
        adm.done(t)
        adm.release(1, 1000)
    assert adm.slowdown == pytest.approx(1.0, abs=0.05)
    assert isinstance(adm.admit(1, 1000, deadline_ms=10_000), Ticket)
    assert isinstance(adm.admit(1, 2000, deadline_ms=3500), Ticket)


def test_a_batch_counts_when_its_last_note_leaves() -> None:
    clock = Clock()
    adm = Admission(
        AdmissionConfig(cold_margin=1.0, overhead_ms=0.0, prior_speed_chars_per_s=1000.0, slowdown_alpha=1.0),
        clock=clock,
    )
    t = adm.admit(3, 3000, deadline_ms=60_000)
    assert isinstance(t, Ticket) and t.predicted_s == pytest.approx(3.0)
    clock.t = 1.0
    adm.done(t)
    clock.t = 2.0
    adm.done(t)
    assert adm.slowdown == 1.0  # not yet: two of three notes
    clock.t = 6.0
    adm.done(t)
    assert adm.slowdown == pytest.approx(2.0)
    assert adm.snapshot()["slowdown"] == pytest.approx(2.0)


def test_one_stuck_request_cannot_close_admission() -> None:
    clock = Clock()
    adm = Admission(
        AdmissionConfig(cold_margin=1.0, overhead_ms=0.0, prior_speed_chars_per_s=1000.0, slowdown_alpha=1.0),
        clock=clock,
    )
    t = adm.admit(1, 1000, deadline_ms=300_000)
    assert isinstance(t, Ticket)
    clock.t = 280.0  # a replica died under it
    adm.done(t)
    assert adm.slowdown == 10.0


def test_concurrent_admissions_never_exceed_the_cap() -> None:
    adm = _adm(max_in_flight_per_replica=50)
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            ok = isinstance(adm.admit(1, 1, deadline_ms=1000), Ticket)
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 50 and adm.in_flight_notes == 50


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match="max_in_flight_per_replica"):
        AdmissionConfig(max_in_flight_per_replica=0)
    with pytest.raises(ValueError, match="safety"):
        AdmissionConfig(safety=0.5)
    with pytest.raises(ValueError, match="tail_margin"):
        AdmissionConfig(tail_margin=0.9)
    with pytest.raises(ValueError, match="slowdown_alpha"):
        AdmissionConfig(slowdown_alpha=0)
    with pytest.raises(ValueError, match="typo"):
        AdmissionConfig.model_validate({"typo": 1})


def test_a_request_running_late_tightens_admission_before_it_finishes() -> None:
    clock = Clock()
    adm = Admission(
        AdmissionConfig(cold_margin=1.0, overhead_ms=0.0, safety=1.0, tail_margin=1.0, prior_speed_chars_per_s=1000.0),
        clock=clock,
    )
    held = adm.admit(1, 1000, deadline_ms=10_000)
    assert isinstance(held, Ticket) and held.predicted_s == pytest.approx(1.0)
    clock.t = 0.5  # on time so far: 3 s of work fits 3.5 s
    probe = adm.admit(1, 2000, deadline_ms=3500)
    assert isinstance(probe, Ticket)
    adm.done(probe)
    adm.release(1, 2000)
    assert adm.snapshot()["lateness"] == pytest.approx(0.5)
    clock.t = 2.5  # still in the fast tier at 2.5x its prediction; nothing has finished yet
    assert adm.slowdown == pytest.approx(1.0, abs=0.2)
    refusal = adm.admit(1, 2000, deadline_ms=3500)
    assert isinstance(refusal, Refusal) and refusal.reason == "deadline"
    adm.done(held)  # it left: no longer open, and the running mean has learnt from it
    adm.release(1, 1000)
    assert adm.snapshot()["lateness"] == 0.0
    assert adm.slowdown > 1.0


def test_a_ticket_never_closed_is_forgotten_after_the_longest_deadline() -> None:
    clock = Clock()
    adm = Admission(
        AdmissionConfig(cold_margin=1.0, overhead_ms=0.0, safety=1.0, tail_margin=1.0, prior_speed_chars_per_s=1000.0),
        clock=clock,
    )
    leaked = adm.admit(1, 1000, deadline_ms=10_000)
    assert isinstance(leaked, Ticket)
    adm.release(1, 1000)  # released but never closed with done()
    clock.t = 100.0
    assert adm.snapshot()["lateness"] == pytest.approx(10.0)  # clamped
    clock.t = 400.0
    assert adm.snapshot()["lateness"] == 0.0
    assert isinstance(adm.admit(1, 1000, deadline_ms=3500), Ticket)


def test_a_starting_replica_slows_the_running_ones_by_its_cost_until_it_is_up() -> None:
    adm = _adm(replica_start_s=5.0, starting_replica_cost=0.5)
    adm.record(1000, 1000.0)
    adm.set_replicas(running=1, starting=0, max_replicas=2)
    assert adm.estimate_s(3000) == pytest.approx(3.0)
    adm.set_replicas(running=1, starting=1, max_replicas=2)
    # half a replica while the other starts: 3,000 chars take 6 s; beyond 5 s both run in full
    assert adm.estimate_s(2000) == pytest.approx(4.0)
    assert adm.estimate_s(3000) == pytest.approx(5.0 + 500 / 2000)
    assert isinstance(adm.admit(1, 1000, deadline_ms=60_000), Ticket)
    assert isinstance(adm.admit(1, 1000, deadline_ms=3000), Refusal)  # 4 s at half speed


def test_under_load_with_room_to_grow_a_start_is_counted_before_it_begins() -> None:
    adm = _adm(replica_start_s=5.0, starting_replica_cost=0.5, warm_samples=0)
    adm.record(1000, 1000.0)
    adm.set_replicas(running=1, starting=0, max_replicas=2)
    assert adm.estimate_s(1000) == pytest.approx(1.0)  # idle: nothing to slow down
    first = adm.admit(1, 1000, deadline_ms=60_000)
    assert isinstance(first, Ticket)
    # work in flight and a second replica allowed: the autoscaler may start it at any moment, and
    # its start halves the running replica, so 2,000 chars take 4 s, not 2
    assert adm.estimate_s(1000) == pytest.approx(4.0)
    assert adm.snapshot()["anticipated_start"] == 1.0
    assert isinstance(adm.admit(1, 1000, deadline_ms=3000), Refusal)
    adm.set_replicas(running=2, starting=0, max_replicas=2)  # at max_replicas no start can come
    assert adm.estimate_s(1000) == pytest.approx(1.0)
    assert adm.snapshot()["anticipated_start"] == 0.0
    cold = _adm(replica_start_s=5.0, starting_replica_cost=0.5, warm_samples=1)
    cold.record(1000, 1000.0)
    cold.set_replicas(running=1, starting=0, max_replicas=2)
    assert isinstance(cold.admit(1, 1000, deadline_ms=60_000), Ticket)
    assert cold.estimate_s(1000) == pytest.approx(2.0)  # cold: the cold margin (1.0 here) stands in
    assert cold.snapshot()["anticipated_start"] == 0.0
    no_anticipation = _adm(replica_start_s=5.0, starting_replica_cost=0.5, anticipate_upscale=False, warm_samples=0)
    no_anticipation.record(1000, 1000.0)
    no_anticipation.set_replicas(running=1, starting=0, max_replicas=2)
    assert isinstance(no_anticipation.admit(1, 1000, deadline_ms=60_000), Ticket)
    assert no_anticipation.estimate_s(1000) == pytest.approx(2.0)


def test_after_an_idle_spell_the_estimate_is_cold_until_requests_finish() -> None:
    clock = Clock()
    adm = Admission(
        AdmissionConfig(
            overhead_ms=0.0,
            safety=1.0,
            tail_margin=1.0,
            prior_speed_chars_per_s=1000.0,
            cold_margin=2.0,
            warm_samples=2,
            idle_reset_s=2.0,
        ),
        clock=clock,
    )
    assert adm.snapshot()["cold"] == 1.0  # a new ingress has measured nothing under this load
    first = adm.admit(1, 1000, deadline_ms=60_000)
    assert isinstance(first, Ticket)
    assert adm.estimate_s(1000) == pytest.approx(4.0)  # 2,000 chars at 1,000/s, doubled while cold
    for _ in range(2):
        t = adm.admit(1, 10, deadline_ms=60_000)
        assert isinstance(t, Ticket)
        adm.done(t)
        adm.release(1, 10)
    assert adm.snapshot()["cold"] == 0.0 and adm.estimate_s(1000) == pytest.approx(2.0)
    adm.done(first)
    adm.release(1, 1000)
    clock.t = 1.0  # a short pause: still warm
    again = adm.admit(1, 1000, deadline_ms=60_000)
    assert isinstance(again, Ticket) and adm.snapshot()["cold"] == 0.0
    adm.done(again)
    adm.release(1, 1000)
    clock.t = 5.0  # idle for 4 s: the next burst starts cold
    assert isinstance(adm.admit(1, 1000, deadline_ms=60_000), Ticket)
    assert adm.snapshot()["cold"] == 1.0
    assert isinstance(adm.admit(1, 1000, deadline_ms=3000), Refusal)  # 4 s cold; 2 s warm would fit
