"""Deadline-aware admission: refuse a request only when it cannot finish inside its deadline.

The ingress keeps one `Admission` per replica. It knows the work already admitted and not yet
answered (characters of note text: a fast-tier pass costs about in proportion to its length),
how fast one fast-tier replica works (characters per compute-second, measured from the
`elapsed_ms` the replicas report for their batches), and how many replicas are running or being
started (polled from the Serve controller). A request is admitted when the work ahead of it plus
its own would clear, at that capacity, before its deadline; replicas that are starting count
only from the moment they are expected to be up, and only when that moment falls inside the
deadline. So under a load the running replicas cannot meet in time, the queue still forms (the
autoscaler sees it and adds replicas) as long as each admitted request can be answered in time;
refusal is for load beyond that.

Pure bookkeeping, no Ray: the ingress feeds it, tests drive it with their own clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from serve_app.shedding import refusal_message, retry_after

# The longest deadline a request may carry (serve_app/config.py's MAX_DEADLINE_MS) plus a margin.
_FORGET_AFTER_S = 310.0


class AdmissionConfig(BaseModel):
    """How the ingress admits work (see module docstring); the defaults suit a synchronous API."""

    model_config = ConfigDict(extra="forbid")

    max_in_flight_per_replica: int = Field(
        default=32,
        ge=1,
        description="Hard cap on notes in flight at one ingress replica, per fast-tier replica at max_replicas "
        "(cap = this x max_replicas): a bound on memory whatever the deadlines say.",
    )
    replica_start_s: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a starting fast-tier replica takes to answer (measured locally: 5-8 s); starting "
        "replicas count as capacity only for deadlines longer than this.",
    )
    overhead_ms: float = Field(
        default=300.0,
        ge=0,
        description="Fixed time per request outside the fast tier's compute (proxy, ingress, batching wait, "
        "merge), added to every estimate.",
    )
    safety: float = Field(
        default=1.5,
        ge=1.0,
        description="Least multiplier on the estimated time to clear the queue: the measured speed is compute "
        "time only, while at saturation the proxy, the ingress and (de)serialization share the same cores "
        "(measured: at 1.2, 48 clients with a 3 s deadline got a 504 for 4% of requests).",
    )
    tail_margin: float = Field(
        default=1.3,
        ge=1.0,
        le=5.0,
        description="The measured slowdown is a mean; the multiplier used is max(safety, tail_margin x slowdown) so "
        "that most requests, not the average one, finish inside their deadline.",
    )
    slowdown_alpha: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Weight of each finished request in the running slowdown (actual / predicted time): 0.2 follows "
        "a change in load within about ten requests.",
    )
    refusal_delay_ms: float = Field(
        default=150.0,
        ge=0,
        le=450,
        description="A refusal is answered after this long (the ingress awaits it, no CPU): a client that ignores "
        "Retry-After and retries at once then asks a few times a second instead of spending the cores on "
        "refusals. Measured on 2 cores, 48 clients retrying at once with a 3 s deadline: 250 ms put 5-10% of "
        "refusals past 0.5 s (p50 ~400 ms); 150 ms kept 99.4% within 0.5 s (p50 281 ms) with no fewer notes "
        "answered. At most 450 ms, so a refusal can still arrive within half a second.",
    )
    retry_after_s: int = Field(default=1, ge=1, le=60, description="Least `Retry-After` seconds sent with a 429.")
    front_door_hint_ttl_ms: float = Field(
        default=500.0,
        ge=0,
        le=5000,
        description="How long Ray's proxy may refuse, itself, the requests that the Ingress's last deadline refusal "
        "says it would refuse (serve_app/shedding.py): a refusal then costs the proxy's HTTP parsing instead of "
        "both processes and an actor call each way. Short, because the proxy does not see capacity that grows "
        "meanwhile. 0: every request goes on to the Ingress.",
    )
    prior_speed_chars_per_s: float | None = Field(
        default=3000.0,
        gt=0,
        description="Speed of one fast-tier replica assumed before any pass is measured (the estimate's first "
        "sample), so a burst on a cold ingress is admitted by deadline too (one onnxruntime thread, default "
        "model: about 2,000-4,000 chars/s measured here); None: admit up to the cap until measured.",
    )
    replica_ramp_s: float = Field(
        default=10.0,
        ge=0,
        le=120,
        description="A replica that has just started counts as capacity gradually, in full after this many "
        "seconds: on shared cores a new replica adds less than a replica's speed (measured on 2 cores under a "
        "48-client storm: admitting at once at twice the capacity sent a burst of 504s), and the measured "
        "slowdown needs a few requests to show it. 0: at once.",
    )
    cold_margin: float = Field(
        default=2.0,
        ge=1.0,
        le=10.0,
        description="Extra multiplier on the estimate while it is cold: from the first request after an idle "
        "spell until `warm_samples` requests have finished. The speed it rests on was measured under the last "
        "load, and a burst after a quiet spell can find the cores very differently shared (measured on 2 cores: "
        "48 clients arriving just after a downscale got a dozen 504s from the first burst admitted). Long "
        "deadlines never feel it; short ones get fewer notes admitted for a second or two.",
    )
    warm_samples: int = Field(
        default=8, ge=0, description="Requests that must finish after an idle spell before the estimate is warm."
    )
    idle_reset_s: float = Field(
        default=2.0, ge=0, description="Seconds with nothing in flight after which the estimate counts as cold."
    )
    starting_replica_cost: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of one running replica's speed that each starting replica takes away while it starts: "
        "where all the node's cores are busy, a new replica's imports, model load and warm-up run on the cores "
        "the running ones use (measured on 2 cores: the running replica's batches took 2-3x as long for the "
        "~8 s of a start, and the notes admitted for it ended in 504). 0 where replicas start on spare cores "
        "or other nodes.",
    )
    anticipate_upscale: bool = Field(
        default=True,
        description="With a `starting_replica_cost`, count it as soon as a start is possible (fewer replicas "
        "running than max_replicas and work in flight), not only once a replica is starting: the work admitted "
        "before the start is what a start slows down, and it was admitted for the full speed (measured on 2 "
        "cores, 48 clients with a 3 s deadline from one replica: the 504s all fell in the seconds of the "
        "second replica's start). Costs a shallower queue at fewer than max_replicas under short deadlines; "
        "long deadlines never feel it. Not while the estimate is cold (`cold_margin` covers that time).",
    )
    poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="How often the ingress asks the Serve controller for replica counts: a replica removed by a "
        "downscale is still counted until the next poll (measured: a burst arriving just after a downscale, "
        "with 2 s polls, got a dozen 504s).",
    )
    share_by_ingress_replicas: bool = Field(
        default=True,
        description="Count for this ingress replica only its share of the fast tier's capacity (1 / the running "
        "ingress replicas): each replica sees only the work it admitted itself, while the fast-tier replicas "
        "serve every ingress's work (Ray's proxies and HAProxy spread requests evenly over them). Without it, "
        "N ingress replicas together admit about N times what fits the deadlines, until the measured slowdown "
        "catches up (measured on 2 cores, two ingress replicas, 48 clients with a 3 s deadline: README "
        "'Serving').",
    )
    speed_halflife_s: float = Field(
        default=6.0,
        gt=0,
        description="Half-life, in seconds of fast-tier compute, of the per-replica speed estimate (exponentially "
        "weighted). Short, because on shared cores a replica's speed changes within seconds (a second replica "
        "starting, a refusal storm) and admission must follow it.",
    )


@dataclass
class Ticket:
    """An admitted request: when it was admitted and how long it was predicted to take to leave the
    fast tier (None before any speed was measured); `Admission.done` closes it per note."""

    notes: int
    started: float
    predicted_s: float | None
    latest: float = 0.0


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused, and when to come back."""

    reason: str  # `in_flight_cap` | `deadline` (metric label; never note text)
    message: str
    retry_after_s: int
    # a deadline refusal's estimate, for the front door (serve_app/shedding.py): the work in flight
    # alone, and each further character, in ms with margins
    ahead_ms: float | None = None
    ms_per_char: float | None = None


class Admission:
    """Admitted work, measured replica speed, replica counts; `admit` decides."""

    def __init__(self, cfg: AdmissionConfig, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self.in_flight_notes = 0
        self.in_flight_chars = 0
        self.running_replicas = 1
        self._ramp_from = 1.0  # capacity counted when the running count last rose ...
        self._ramp_at = -math.inf  # ... and when
        self.starting_replicas = 0
        self.max_replicas = 1
        self.ingress_replicas = 1  # running ingress replicas sharing the fast tier (this one included)
        # chars/s of one replica, EWMA; the prior is its first sample, so one cold first batch
        # (measured: a new replica's first pass is several times slower) does not replace it
        self._speed: float | None = cfg.prior_speed_chars_per_s
        self._speed_at = 0.0
        self._slowdown = 1.0  # actual / predicted time to leave the fast tier, running mean
        # admitted requests still in the fast tier (id -> ticket): one running later than predicted
        # raises the multiplier at once, before it finishes and reaches the running mean
        self._open: dict[int, Ticket] = {}
        self._finished_since_idle = 0  # requests finished since the last idle spell ...
        self._idle_from: float | None = 0.0  # ... and when in-flight work last fell to zero (None: busy)

    # -- what the ingress feeds in -------------------------------------------------------------

    def set_replicas(self, running: int, starting: int, max_replicas: int, ingress_replicas: int = 1) -> None:
        """Replica counts of the fast tier, and of the ingress replicas that share it, as the Serve
        controller reports them."""
        with self._lock:
            self.ingress_replicas = max(1, ingress_replicas)
            running = max(0, running)
            if running > self.running_replicas:  # ramp up from what is counted now
                self._ramp_from = self._effective_running_locked()
                self._ramp_at = self._clock()
            elif running < self.running_replicas:  # a replica gone is gone at once
                self._ramp_from, self._ramp_at = float(running), -math.inf
            self.running_replicas = running
            self.starting_replicas = max(0, starting)
            self.max_replicas = max(1, max_replicas, running + starting)

    def record(self, chars: int, compute_ms: float) -> None:
        """A fast-tier pass of `chars` characters took `compute_ms` of a replica's compute time."""
        if compute_ms <= 0 or chars <= 0:
            return
        speed = chars / (compute_ms / 1000)
        with self._lock:
            now = self._clock()
            if self._speed is None:
                self._speed = speed
            else:
                # weight by the sample's own duration, so many short notes and one long note of the
                # same total compute move the estimate the same
                keep = math.exp(-math.log(2) * (compute_ms / 1000) / self.cfg.speed_halflife_s)
                self._speed = keep * self._speed + (1 - keep) * speed
            self._speed_at = now

    def _effective_running_locked(self) -> float:
        """Running replicas as counted for capacity: those that joined in the last `replica_ramp_s`
        count in proportion to how long ago they did."""
        ramp = self.cfg.replica_ramp_s
        frac = 1.0 if ramp <= 0 else min(1.0, max(0.0, (self._clock() - self._ramp_at) / ramp))
        return self._ramp_from + (self.running_replicas - self._ramp_from) * frac

    @property
    def speed(self) -> float | None:
        """Characters per second one fast-tier replica clears (None until measured)."""
        return self._speed

    @property
    def cap(self) -> int:
        return self.cfg.max_in_flight_per_replica * self.max_replicas

    # -- the decision --------------------------------------------------------------------------

    def estimate_s(self, chars: int) -> float | None:
        """Seconds until `chars` more characters, queued behind what is in flight, are answered at
        the capacity running or starting (None while no speed has been measured)."""
        with self._lock:
            return self._estimate_locked(self.in_flight_chars + chars)

    def _estimate_locked(self, work: int) -> float | None:
        raw = self._raw_estimate_locked(work)
        if raw is None:
            return None
        return raw * self._multiplier_locked()

    def _multiplier_locked(self) -> float:
        m = max(self.cfg.safety, self.cfg.tail_margin * max(self._slowdown, self._lateness_locked()))
        return m * (self.cfg.cold_margin if self._cold_locked() else 1.0)

    def _cold_locked(self) -> bool:
        """Whether the estimate is cold: too few requests finished since the last idle spell."""
        return self._finished_since_idle < self.cfg.warm_samples

    def _lateness_locked(self) -> float:
        """How far past its prediction the latest-running open request is (age / predicted; 0 when
        none is open). The running mean learns only from requests that finish, seconds after the
        fast tier slowed down (a second replica sharing the cores, a refusal storm); a request
        already over its prediction is news now. Clamped like the mean; tickets older than the
        longest deadline are forgotten (a leaked one must not close admission)."""
        now = self._clock()
        worst = 0.0
        for key, t in list(self._open.items()):
            age = now - t.started
            if age > _FORGET_AFTER_S:
                del self._open[key]
            elif t.predicted_s:
                worst = max(worst, age / t.predicted_s)
        return min(10.0, worst)

    def _anticipating_locked(self) -> bool:
        """Whether a replica start is counted before it begins (`anticipate_upscale`): under load
        with room to grow, one may start at any moment. Not while the estimate is cold: the cold
        margin already doubles it, and both at once refused a fresh service's first burst of 30 s
        requests (measured: 13 of 8 clients' first ~50)."""
        return (
            self.cfg.anticipate_upscale
            and self.cfg.starting_replica_cost > 0
            and self.in_flight_notes > 0
            and self.running_replicas < self.max_replicas
            and not self._cold_locked()
        )

    def _raw_estimate_locked(self, work: int) -> float | None:
        """The time to clear `work` characters at the measured speed, without any margin."""
        if self._speed is None:
            return None
        cfg = self.cfg
        full = self._effective_running_locked()
        speed = self._share_locked(self._speed)
        # a starting replica slows the running ones (shared cores), never below a quarter of them
        slowing = max(self.starting_replicas, int(self._anticipating_locked()))
        now_rate = speed * max(0.25 * full, full - cfg.starting_replica_cost * slowing)
        later_rate = speed * (full + self.starting_replicas)
        if now_rate > 0 and work / now_rate <= cfg.replica_start_s:
            t = work / now_rate
        elif later_rate > 0:  # the starting replicas join after replica_start_s
            done_before = now_rate * cfg.replica_start_s
            t = cfg.replica_start_s + (work - done_before) / later_rate
        else:
            return math.inf
        return t + cfg.overhead_ms / 1000

    def _share_locked(self, speed: float) -> float:
        """This ingress replica's share of a fast-tier replica's speed: the other ingress replicas'
        work is not in its books."""
        return speed / (self.ingress_replicas if self.cfg.share_by_ingress_replicas else 1)

    def _least_ms_per_char_locked(self) -> float | None:
        """The least time, in ms with margins, that one more character adds to an estimate: at the
        rate of every replica running or starting (starts only make later work faster), so an
        estimate built from it never exceeds admission's own (the front door's hint errs towards
        admission: serve_app/shedding.py)."""
        if self._speed is None:
            return None
        rate = self._share_locked(self._speed) * (self._effective_running_locked() + self.starting_replicas)
        return math.inf if rate <= 0 else 1000 * self._multiplier_locked() / rate

    def admit(self, notes: int, chars: int, deadline_ms: float) -> Ticket | Refusal:
        """Take `notes` notes of `chars` characters in total (a `Ticket`), or say why not (a
        `Refusal`). On admission the work counts as in flight until `release`."""
        with self._lock:
            if self.in_flight_notes + notes > self.cap:
                retry = self.cfg.retry_after_s
                return Refusal("in_flight_cap", "too many notes in flight; retry later", retry)
            raw = self._raw_estimate_locked(self.in_flight_chars + chars)
            est = None if raw is None else raw * self._multiplier_locked()
            # An idle service admits whatever it is asked: a single request's own length is its
            # service time, and refusing it would help no one.
            if est is not None and self.in_flight_notes > 0 and est * 1000 > deadline_ms:
                ahead = self._estimate_locked(self.in_flight_chars)
                return Refusal(
                    "deadline",
                    refusal_message(deadline_ms),
                    retry_after(est * 1000, deadline_ms, self.cfg.retry_after_s),
                    ahead_ms=None if ahead is None else ahead * 1000,
                    ms_per_char=self._least_ms_per_char_locked(),
                )
            if self._idle_from is not None and self._clock() - self._idle_from >= self.cfg.idle_reset_s:
                self._finished_since_idle = 0  # a quiet spell: the speed measured before may not hold
            self._idle_from = None
            self.in_flight_notes += notes
            self.in_flight_chars += chars
            ticket = Ticket(notes=notes, started=self._clock(), predicted_s=raw if raw != math.inf else None)
            self._open[id(ticket)] = ticket
            return ticket

    def done(self, ticket: Ticket) -> None:
        """One note of an admitted request has left the fast tier (answered or not). When its last
        note has, the request's actual time against its prediction updates the slowdown."""
        with self._lock:
            now = self._clock()
            ticket.latest = max(ticket.latest, now)
            ticket.notes -= 1
            if ticket.notes != 0:  # notes still in the fast tier (or a stray extra call)
                return
            self._open.pop(id(ticket), None)
            self._finished_since_idle += 1
            if ticket.predicted_s is None or ticket.predicted_s <= 0:
                return
            # clamped: one request stuck behind a dying replica must not shut admission for minutes
            ratio = min(10.0, max(0.25, (ticket.latest - ticket.started) / ticket.predicted_s))
            a = self.cfg.slowdown_alpha
            self._slowdown = (1 - a) * self._slowdown + a * ratio

    @property
    def slowdown(self) -> float:
        """Running mean of actual / predicted time to leave the fast tier (1.0 until measured)."""
        return self._slowdown

    def release(self, notes: int, chars: int) -> None:
        """Admitted work that has left the fast tier (answered, failed or cancelled)."""
        with self._lock:
            self.in_flight_notes = max(0, self.in_flight_notes - notes)
            self.in_flight_chars = max(0, self.in_flight_chars - chars)
            if self.in_flight_notes == 0 and self._idle_from is None:
                self._idle_from = self._clock()

    def snapshot(self) -> dict[str, float]:
        """For /readyz and metrics."""
        with self._lock:
            return {
                "in_flight_notes": float(self.in_flight_notes),
                "in_flight_chars": float(self.in_flight_chars),
                "replica_speed_chars_per_s": round(self._speed, 1) if self._speed is not None else -1.0,
                "running_replicas": float(self.running_replicas),
                "counted_replicas": round(self._effective_running_locked(), 2),
                "starting_replicas": float(self.starting_replicas),
                "max_replicas": float(self.max_replicas),
                "ingress_replicas": float(self.ingress_replicas),
                "slowdown": round(self._slowdown, 3),
                "lateness": round(self._lateness_locked(), 3),
                "cold": float(self._cold_locked()),
                "anticipated_start": float(self._anticipating_locked()),
            }
