"""TokenBucket: refill arithmetic on a fake clock, all-or-nothing spend, refunds, thread safety."""

from __future__ import annotations

import sys
import threading

import pytest

from router.budget import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_starts_full_at_burst(clock):
    b = TokenBucket(rate_per_minute=60, burst=10, clock=clock)
    assert b.level == 10
    assert b.try_spend(10)
    assert b.level == 0


def test_spend_is_all_or_nothing(clock):
    b = TokenBucket(rate_per_minute=0, burst=10, clock=clock)
    assert b.try_spend(4)
    assert b.level == pytest.approx(6)
    assert not b.try_spend(7)
    assert b.level == pytest.approx(6)  # a refused spend takes nothing
    assert b.try_spend(6)
    assert not b.try_spend(0.001)
    assert b.try_spend(0)  # nothing costs nothing


def test_refills_at_rate_per_second_up_to_burst(clock):
    b = TokenBucket(rate_per_minute=120, burst=10, clock=clock)  # 2 per second
    assert b.try_spend(10)
    clock.now += 1.5
    assert b.level == pytest.approx(3.0)
    assert not b.try_spend(3.5)
    clock.now += 0.25
    assert b.try_spend(3.5)
    assert b.level == pytest.approx(0.0)
    clock.now += 3600
    assert b.level == pytest.approx(10.0)  # capped at burst
    assert b.try_spend(10) and not b.try_spend(0.5)


def test_zero_rate_never_refills(clock):
    b = TokenBucket(rate_per_minute=0, burst=5, clock=clock)
    assert b.try_spend(5)
    clock.now += 1e6
    assert b.level == 0
    assert not b.try_spend(1)


def test_cost_above_burst_is_never_paid(clock):
    b = TokenBucket(rate_per_minute=6000, burst=10, clock=clock)
    assert not b.try_spend(10.5)
    clock.now += 1e6
    assert not b.try_spend(10.5)
    assert b.level == 10  # and the refusal took nothing


def test_refund_is_capped_at_burst(clock):
    b = TokenBucket(rate_per_minute=0, burst=10, clock=clock)
    b.refund(5)
    assert b.level == 10
    assert b.try_spend(8)
    b.refund(3)
    assert b.level == pytest.approx(5)
    b.refund(100)
    assert b.level == 10


def test_refund_accounts_for_refill_first(clock):
    b = TokenBucket(rate_per_minute=60, burst=10, clock=clock)  # 1 per second
    assert b.try_spend(10)
    clock.now += 4  # level 4
    b.refund(3)
    assert b.level == pytest.approx(7)
    clock.now += 100
    assert b.level == pytest.approx(10)


@pytest.mark.parametrize(("rate", "burst"), [(-1, 10), (10, 0), (10, -5)])
def test_invalid_parameters_are_refused(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_concurrent_spends_succeed_exactly_burst_times():
    burst, threads, attempts = 3000, 8, 500
    b = TokenBucket(rate_per_minute=0, burst=burst)
    start = threading.Barrier(threads)
    wins = [0] * threads

    def spend(i: int) -> None:
        start.wait()
        for _ in range(attempts):
            if b.try_spend(1):
                wins[i] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to expose races
    try:
        workers = [threading.Thread(target=spend, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    assert sum(wins) == burst
    assert b.level == 0
