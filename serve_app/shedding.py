"""Refusals answered at the front door: the Ingress's last refusal, as a hint the proxy acts on.

Why. Under a storm of clients that ask again as soon as they are refused, refusals are most of the
service's work: each one crosses Ray's proxy and the Ingress, two Python processes and an actor call
each way, about 10 ms of CPU in all on the 2-core machine, while the refusal itself (admission's
arithmetic) is microseconds. 48 such clients kept a third of the refusals past 0.5 s on a slow
2-core machine (README, "Serving"). Refused at the proxy, a request costs the proxy's HTTP parsing
and this module's arithmetic, and the Ingress never sees it.

How. When the Ingress refuses a note for its deadline, and the request came through a proxy with
the front-door middleware (`serve_app/proxy_shed.py`, which says so in `PACED_HEADER`), the 429
carries a `ShedHint` (`HINT_HEADER`): admission's estimate of the work already in flight (margins
included) and of each further character. The proxy holds the latest hint per caller (API key and
policy) for `ttl_ms` and refuses itself, with the same 429, the requests the hint says the Ingress
would refuse (`decide`); everything else goes on to the Ingress, which decides as before. The hint
errs towards admission: the work ahead drains at real time in it, and the work the Ingress admitted
since it is not in it; the one way the proxy can refuse what the Ingress would take is capacity that
grows within the hint's life (a replica that becomes ready), bounded by `ttl_ms`. A request that
would be a 4xx is never refused here: the proxy validates it by the Ingress's own rules first.

Pacing. The Ingress answers a refusal after `refusal_delay_ms` (serve_app/admission.py): a client
that retries at once then asks a few times a second. Behind the middleware the Ingress answers at
once and the proxy waits instead (`PACE_HEADER`), so the hint reaches the proxy fresh and the wait
costs no Ingress time. Callers that reach the Ingress another way (gRPC, HAProxy) are paced by the
Ingress as before.

Pure functions and models; no Ray, no I/O.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

PACED_HEADER = "x-clinie-front-door"
"""Request header the proxy middleware sets (value `paced`): it paces refusals and reads hints."""
PACED_VALUE = "paced"
PACE_HEADER = "x-clinie-pace-ms"
"""Response header on an admission refusal behind the middleware: how long the proxy waits before
passing the refusal on (the Ingress did not wait)."""
HINT_HEADER = "x-clinie-shed-hint"
"""Response header on a deadline refusal behind the middleware: a `ShedHint` as JSON."""
INTERNAL_RESPONSE_HEADERS = (PACE_HEADER.encode(), HINT_HEADER.encode())
"""Never passed on to the caller."""


class ShedHint(BaseModel):
    """What the Ingress knew when it refused a note for its deadline, for the proxy to refuse alike."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ahead_ms: float = Field(ge=0, description="Estimated time to clear the work in flight alone, margins included.")
    ms_per_char: float = Field(ge=0, description="Estimated time each further character of note text adds.")
    ttl_ms: float = Field(gt=0, le=5000, description="How long the proxy may act on this hint.")
    pace_ms: float = Field(ge=0, le=1000, description="Wait before answering a refusal (`refusal_delay_ms`).")
    retry_after_s: int = Field(ge=1, le=60, description="Least Retry-After of a refusal.")
    default_deadline_ms: float = Field(gt=0, description="Deadline of a request that names none.")
    max_note_chars: int = Field(ge=1, description="The Ingress's note limit (a longer note is a 413, not a 429).")
    max_body_bytes: int = Field(ge=1, description="The Ingress's body limit (a larger body is a 413).")
    policy: str | None = Field(default=None, description="The refused request's `policy`, as it named it (None: none).")


def refusal_message(deadline_ms: float) -> str:
    """The message of a deadline refusal (the same wherever the refusal is made)."""
    return f"the service cannot answer within the deadline ({deadline_ms:.0f} ms) at its current capacity; retry later"


def retry_after(estimate_ms: float, deadline_ms: float, floor_s: int) -> int:
    """Retry-After of a deadline refusal: about when the estimate would fit, within [floor, 60] s
    (60 when nothing is running or starting: the estimate is infinite)."""
    if not math.isfinite(estimate_ms):
        return 60
    return max(floor_s, min(60, math.ceil((estimate_ms - deadline_ms) / 1000)))


def decide(hint: ShedHint, age_ms: float, chars: int, deadline_ms: float) -> int | None:
    """Refuse a note of `chars` characters with `deadline_ms`, `age_ms` after `hint` was made?
    Its Retry-After seconds if so, else None (send it on to the Ingress).

    The work ahead drains at real time (what the Ingress admitted since is not counted: the hint
    errs towards admission); a hint past its ttl, or whose work ahead has drained, refuses nothing
    (the Ingress admits anything when it has nothing in flight)."""
    if age_ms < 0 or age_ms >= hint.ttl_ms:
        return None
    ahead = hint.ahead_ms - age_ms
    if ahead <= 0:
        return None
    estimate = ahead + chars * hint.ms_per_char
    if estimate <= deadline_ms:
        return None
    return retry_after(estimate, deadline_ms, hint.retry_after_s)
