"""A token bucket for LLM spend: `rate_per_minute` cost units refill continuously up to `burst`.

Thread-safe (the router deployment may run concurrent requests in threads) and driven by an
injectable clock so tests need no sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Spend allowance: `try_spend(cost)` succeeds only while the bucket holds `cost`."""

    def __init__(self, rate_per_minute: float, burst: float, clock: Callable[[], float] = time.monotonic):
        if rate_per_minute < 0 or burst <= 0:
            raise ValueError("rate_per_minute must be >= 0 and burst > 0")
        self.rate_per_s = rate_per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._level = burst
        self._at = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._at) * self.rate_per_s)
        self._at = now

    @property
    def level(self) -> float:
        with self._lock:
            self._refill()
            return self._level

    def try_spend(self, cost: float) -> bool:
        """Take `cost` if available (all or nothing). A cost above `burst` can never be paid."""
        with self._lock:
            self._refill()
            if cost <= self._level:
                self._level -= cost
                return True
            return False

    def refund(self, cost: float) -> None:
        """Give back spend that did not happen (the LLM call was skipped or failed early)."""
        with self._lock:
            self._refill()
            self._level = min(self.burst, self._level + cost)
