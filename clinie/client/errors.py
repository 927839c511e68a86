"""The one error type of the client, and how HTTP and gRPC failures become it.

Both transports end in the same `ClinieError(status, code, message)`: `status` is the HTTP status
(a gRPC status code is mapped to the HTTP status the contract pairs it with), `code` and
`message` come from the contract's error body `{"error": {"code", "message"}}` when the service
sent one, else they describe what the client saw (the reply's text is cut short; it may echo
nothing but what a proxy wrote, never the note).
"""

from __future__ import annotations

import json
from typing import Any

# gRPC status name -> the HTTP status the service contract mirrors it with.
GRPC_TO_HTTP: dict[str, int] = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

# What the client retries: the service's two "come back later" answers (and see
# ClinieError.retryable for a 500 that the service did not write).
RETRYABLE = frozenset({429, 503})


class ClinieError(Exception):
    """A request the service (or the way to it) did not answer with a result.

    `status` is the HTTP status (gRPC codes mapped as the contract pairs them: INVALID_ARGUMENT
    400, UNAUTHENTICATED 401, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504);
    `code` the contract's error code (`empty_text`, `unknown_policy`, `overloaded`, ...);
    `message` what is wrong; `retry_after` the seconds the service asked to wait, if it did;
    `attempts` how many times the request was sent; `from_service` whether the answer carried
    the contract's error body (the service wrote it) rather than a proxy's or the client's own.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: float | None = None,
        attempts: int = 1,
        from_service: bool = True,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.attempts = attempts
        self.from_service = from_service

    @property
    def retryable(self) -> bool:
        """Whether sending again may succeed: the service said "later" (429 or 503), or a 500 came
        from the way to it and not from it. Ray Serve's proxy answers 500 (gRPC INTERNAL) for the
        requests in flight on an Ingress replica that dies; extraction is a pure function, so
        sending again is safe, and the replacement (or the other replica) answers. A 500 with the
        contract's body is the service's own failure: not retried."""
        return self.status in RETRYABLE or (self.status == 500 and not self.from_service)


def _retry_after(value: Any) -> float | None:
    """`Retry-After` in seconds (the service sends whole seconds; an HTTP date is not used by it)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def from_error_body(status: int, body: str, retry_after: Any = None) -> ClinieError:
    """A ClinieError from a failed answer's status and body text (the contract's JSON error if it
    is one; otherwise a proxy's answer, named by its status)."""
    code, message = f"http_{status}", _short(body) or f"HTTP {status}"
    try:
        parsed = json.loads(body)
    except (ValueError, TypeError):
        parsed = None
    ours = isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
    if ours:
        err = parsed["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
    return ClinieError(status, code, message, _retry_after(retry_after), from_service=ours)


def from_grpc(code_name: str, details: str | None, trailing: Any = None) -> ClinieError:
    """A ClinieError from a gRPC status (its name, e.g. `RESOURCE_EXHAUSTED`), details (the
    service puts the contract's JSON error there) and trailing metadata (`retry-after`)."""
    status = GRPC_TO_HTTP.get(code_name, 500)
    retry_after = None
    for key, value in trailing or ():
        if key.lower() == "retry-after":
            retry_after = value
    err = from_error_body(status, details or "", retry_after)
    if not err.from_service:  # not the service's JSON: a transport-level status
        err = ClinieError(status, code_name.lower(), err.message or code_name, err.retry_after, from_service=False)
    return err
