"""The wire: request bodies (HTTP; gRPC mirrors them in clinie/proto/clinie.proto), the
request-level error both transports map to their status codes, and the safe parsing of a body.

Error messages name the field and the rule, never the note text (pydantic's echo of input values
is dropped), and a hostile body (bad UTF-8, deep nesting) is a 400, never an internal error.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationError

from serve_app.config import MAX_DEADLINE_MS


class ExtractRequest(BaseModel):
    """`POST /v1/extract` body."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(description="The note.")
    note_id: str | None = Field(default=None, max_length=256, description="Echoed back in the result.")
    policy: str | None = Field(default=None, max_length=128, description="Routing policy; default: `default`.")
    deadline_ms: StrictFloat | None = Field(
        default=None,
        gt=0,
        le=MAX_DEADLINE_MS,
        allow_inf_nan=False,
        description="Answer within this many ms, counted from arrival at the ingress (default 30,000; at most "
        "300,000). Refused at once (429) when the service cannot make it; 504 `deadline_exceeded` if it is "
        "overtaken after admission.",
    )


class BatchNote(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Any = Field(default=None, description="The note (a bad one fails only its own slot).")
    note_id: str | None = Field(default=None, max_length=256, description="Echoed back in the slot.")


class ExtractBatchRequest(BaseModel):
    """`POST /v1/extract/batch` body."""

    model_config = ConfigDict(extra="ignore")

    notes: list[BatchNote] = Field(description="Notes, answered in the same order.")
    policy: str | None = Field(default=None, max_length=128, description="Routing policy for every note.")
    deadline_ms: StrictFloat | None = Field(
        default=None,
        gt=0,
        le=MAX_DEADLINE_MS,
        allow_inf_nan=False,
        description="Deadline for the whole batch, ms (default 30,000; at most 300,000).",
    )


class ApiError(Exception):
    """A request-level error: HTTP status, gRPC status name, wire code and a safe message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        self.headers = headers or {}  # HTTP only: for the front door (serve_app/shedding.py), never the caller

    def http_headers(self) -> dict[str, str] | None:
        """The response's headers: `Retry-After` where there is one, and any for the front door."""
        out = {"Retry-After": str(self.retry_after)} if self.retry_after else {}
        out.update(self.headers)
        return out or None

    @property
    def grpc_code(self) -> str:
        return {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            413: "INVALID_ARGUMENT",
            429: "RESOURCE_EXHAUSTED",
            503: "UNAVAILABLE",
            504: "DEADLINE_EXCEEDED",
        }.get(self.status, "INTERNAL")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


# Deeper than any request body needs (the deepest, a batch note, is 3 levels); a bound well
# below Python's recursion limit, so a hostile body is a 400, not a RecursionError.
MAX_JSON_DEPTH = 32


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (containers only: strings cost nothing)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_json(body: bytes) -> Any:
    """The body's JSON, or ApiError 400 `malformed_json` (bad UTF-8, bad JSON, nested too deep)."""
    too_deep = ApiError(400, "malformed_json", f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "malformed_json", "request body is not valid UTF-8 JSON") from None
    except RecursionError:  # deeper than the parser's own stack allows
        raise too_deep from None
    if json_depth(payload) > MAX_JSON_DEPTH:
        raise too_deep
    return payload


def safe_validation_message(exc: ValidationError) -> str:
    """Field path and rule of the first problems, without the input values pydantic would echo."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def spent_ms(header: str | None) -> float:
    """Milliseconds of the request's deadline already spent before it reached this Ingress replica:
    Ray's proxy says so (`x-clinie-spent-ms`, serve_app/proxy_retry.py) when it sends a request
    again after losing the replica it was on. Anything but a number in [0, MAX_DEADLINE_MS] is 0:
    the header can only shorten a caller's own deadline, so a bad one is ignored, not refused."""
    if not header:
        return 0.0
    try:
        value = float(header)
    except ValueError:
        return 0.0
    return value if 0 <= value <= MAX_DEADLINE_MS else 0.0
