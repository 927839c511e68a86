"""The OpenAPI document of the HTTP surface: what /openapi.json serves and serve_app/openapi.json commits.

FastAPI's own document could not be true here: the ingress reads raw bodies (to bound their size
and nesting before parsing), so FastAPI knows neither the request schemas nor the error answers.
This module writes them out, with every constraint the service enforces (lengths, bounds, the
policy names, a text that is not only whitespace) and every status it answers with, each with its
body and content type, so that a client generated from it, or a schema-driven fuzzer, meets the
service as it is. Regenerate the committed copy after changing the surface:

    python -m serve_app.openapi            # writes serve_app/openapi.json
    python -m serve_app.openapi --check    # exit 1 if the committed copy is stale

The served copy differs from the committed one only where the running service differs from the
shipped defaults (its policy names and limits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from clinie.paths import DEFAULT_POLICIES
from clinie.schema import ErrorBody, NoteError, NoteResult

COMMITTED = Path(__file__).resolve().parent / "openapi.json"

# Python's str.isspace() characters (what the service strips before deciding a note is empty),
# spelled out so that Python's `re` and ECMA-262 regexes read the class the same way.
_SPACE = (
    "\\t\\n\\u000b\\f\\r\\u001c\\u001d\\u001e\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
NOT_BLANK = f"[^{_SPACE}]"

ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("malformed_json", "invalid_request", "empty_text", "invalid_text", "unknown_policy"),
    401: ("unauthorized",),
    413: ("body_too_large", "note_too_long", "batch_too_large"),
    429: ("overloaded", "rate_limited"),
    503: ("overloaded", "unavailable"),
    504: ("deadline_exceeded",),
}
ERROR_WHEN = {
    400: "Bad input: not JSON, nested too deep, a field of the wrong type or out of range, an empty note, "
    "an unknown policy.",
    401: "API keys are configured and the request has no valid `Authorization: Bearer KEY`.",
    413: "The body, the note or the batch is over its limit.",
    429: "Admission: the request cannot finish inside its deadline at the capacity running or starting "
    "(`overloaded`); or the API key is over its rate limit, in notes per second (`rate_limited`, the message "
    "names the tenant and its limit).",
    503: "A deployment queue is full, or the fast tier lost its replica twice; come back after `Retry-After`.",
    504: "Admitted, then overtaken by its deadline.",
}


class ErrorResponse(BaseModel):
    """Every non-200 answer of the extraction endpoints: `{"error": {"code", "message"}}`."""

    error: ErrorBody


class BatchResponse(BaseModel):
    """`POST /v1/extract/batch`: one slot per note, in order; a failed note's slot is a NoteError."""

    results: list[NoteResult | NoteError]


def _schema(model: type[BaseModel], components: dict[str, Any], mode: str = "serialization") -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before sending again.", "schema": {"type": "integer", "minimum": 1}}
}


def _errors(statuses: list[int], ref: dict[str, str]) -> dict[str, Any]:
    return {
        str(s): _json(
            ref,
            f"{ERROR_WHEN[s]} Codes: {', '.join(f'`{c}`' for c in ERROR_CODES[s])}.",
            RETRY_AFTER if s in (429, 503) else None,
        )
        for s in statuses
    }


def _deadline(description: str, max_deadline_ms: float) -> dict[str, Any]:
    return {
        "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": max_deadline_ms}, {"type": "null"}],
        "description": description,
    }


def _policy_schema(policies: list[str]) -> dict[str, Any]:
    # Optional fields may also be null, which the service reads as absent (spelled as pydantic does).
    return {
        "anyOf": [{"type": "string", "enum": sorted(policies)}, {"type": "null"}],
        "description": "Routing policy (absent or null: `default`). Any other name, the empty one too, is a 400 "
        "`unknown_policy`.",
    }


def _note_id_schema() -> dict[str, Any]:
    return {
        "anyOf": [{"type": "string", "maxLength": 256}, {"type": "null"}],
        "description": "The caller's id, echoed back.",
    }


def _deadline_text(default_deadline_ms: float) -> str:
    return (
        f"Answer within this many ms, counted from arrival (absent: {default_deadline_ms:g}). Refused at once (429) "
        "when the service cannot make it; 504 `deadline_exceeded` when overtaken after admission."
    )


def _extract_request_schema(
    policies: list[str], max_note_chars: int, max_body_bytes: int, max_deadline_ms: float, default_deadline_ms: float
) -> dict[str, Any]:
    """`ExtractRequest`: the body of `POST /v1/extract`."""
    return {
        "type": "object",
        "title": "ExtractRequest",
        "description": f"`POST /v1/extract` body (at most {max_body_bytes} bytes of JSON, nested at most 32 deep).",
        "required": ["text"],
        "properties": {
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": max_note_chars,
                "pattern": NOT_BLANK,
                "description": "The note: not only whitespace, at most "
                f"{max_note_chars} characters (code points), valid Unicode (no lone surrogates).",
            },
            "note_id": _note_id_schema(),
            "policy": _policy_schema(policies),
            "deadline_ms": _deadline(_deadline_text(default_deadline_ms), max_deadline_ms),
        },
    }


def _batch_request_schemas(
    policies: list[str], max_batch_notes: int, max_body_bytes: int, max_deadline_ms: float, default_deadline_ms: float
) -> dict[str, Any]:
    """`BatchNote` and `ExtractBatchRequest`: the body of `POST /v1/extract/batch`."""
    deadline = _deadline_text(default_deadline_ms).replace("Answer", "Answer every note")
    return {
        "BatchNote": {
            "type": "object",
            "title": "BatchNote",
            "description": "One note of a batch. A bad `text` (missing, not a string, empty, too long) fails "
            "only this note's slot, as a NoteError.",
            "properties": {"text": {"description": "The note."}, "note_id": _note_id_schema()},
        },
        "ExtractBatchRequest": {
            "type": "object",
            "title": "ExtractBatchRequest",
            "description": f"`POST /v1/extract/batch` body (at most {max_body_bytes} bytes of JSON).",
            "required": ["notes"],
            "properties": {
                "notes": {
                    "type": "array",
                    "maxItems": max_batch_notes,
                    "items": {"$ref": "#/components/schemas/BatchNote"},
                    "description": f"At most {max_batch_notes} notes, answered in the same order.",
                },
                "policy": _policy_schema(policies),
                "deadline_ms": _deadline(deadline, max_deadline_ms),
            },
        },
    }


def _request_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _extract_paths(result_ref: dict[str, str], batch_ref: dict[str, str], error_ref: dict[str, str]) -> dict[str, Any]:
    """The extraction endpoints."""
    bearer = [{"bearer": []}, {}]  # optional: only when the service has API keys
    statuses = [400, 401, 413, 429, 503, 504]
    return {
        "/v1/extract": {
            "post": {
                "summary": "Extract one note",
                "operationId": "extract",
                "security": bearer,
                "requestBody": _request_body("ExtractRequest"),
                "responses": {"200": _json(result_ref, "The note's result."), **_errors(statuses, error_ref)},
            }
        },
        "/v1/extract/batch": {
            "post": {
                "summary": "Extract a batch of notes (one bad note fails only its slot)",
                "operationId": "extract_batch",
                "security": bearer,
                "requestBody": _request_body("ExtractBatchRequest"),
                "responses": {"200": _json(batch_ref, "One slot per note, in order."), **_errors(statuses, error_ref)},
            }
        },
    }


def _readiness_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ready", "components", "missing"],
        "properties": {
            "ready": {"type": "boolean"},
            "components": {"type": "object", "description": "State of each component (ids, never paths)."},
            "missing": {"type": "array", "items": {"type": "string"}},
        },
    }


def _probe_paths() -> dict[str, Any]:
    """Liveness, readiness and metrics."""
    readiness = _readiness_schema()
    return {
        "/healthz": {
            "get": {
                "summary": "Process alive",
                "operationId": "healthz",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]},
                        "The ingress process answers.",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Models loaded and able to answer; names what is missing",
                "operationId": "readyz",
                "parameters": [
                    {
                        "name": "strict",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean", "default": False},
                        "description": "Also require the LLM tier.",
                    }
                ],
                "responses": {
                    "200": _json(readiness, "Ready: every required component answers."),
                    "503": _json(readiness, "Not ready: `missing` names what is not."),
                    "422": _json(
                        {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "array"}}},
                        "`strict` is not a boolean (FastAPI's validation error).",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def build(
    *,
    title: str,
    version: str,
    description: str,
    policies: list[str],
    max_note_chars: int,
    max_batch_notes: int,
    max_body_bytes: int,
    max_deadline_ms: float,
    default_deadline_ms: float,
) -> dict[str, Any]:
    """The whole document for a service with these policy names and limits."""
    components: dict[str, Any] = {}
    result_ref = _schema(NoteResult, components)
    error_ref = _schema(ErrorResponse, components)
    batch_ref = _schema(BatchResponse, components)
    components["ExtractRequest"] = _extract_request_schema(
        policies, max_note_chars, max_body_bytes, max_deadline_ms, default_deadline_ms
    )
    components.update(
        _batch_request_schemas(policies, max_batch_notes, max_body_bytes, max_deadline_ms, default_deadline_ms)
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": {**_extract_paths(result_ref, batch_ref, error_ref), **_probe_paths()},
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed only when the service has API keys (`CLINIE_API_KEYS`).",
                }
            },
        },
    }


def shipped() -> dict[str, Any]:
    """The document of a service on the shipped defaults (policy file and limits)."""
    import clinie
    from router.config import load_router_config
    from serve_app.config import MAX_DEADLINE_MS, AppConfig
    from serve_app.ingress import app

    cfg = AppConfig()
    router_cfg = load_router_config(DEFAULT_POLICIES)
    return build(
        title=app.title,
        version=clinie.__version__,
        description=app.description or "",
        policies=list(router_cfg.all_policies()),
        max_note_chars=cfg.limits.max_note_chars,
        max_batch_notes=cfg.limits.max_batch_notes,
        max_body_bytes=cfg.limits.max_body_bytes,
        max_deadline_ms=MAX_DEADLINE_MS,
        default_deadline_ms=cfg.default_deadline_ms,
    )


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write (or --check) the committed OpenAPI document.")
    p.add_argument("--check", action="store_true", help="Exit 1 if serve_app/openapi.json is stale.")
    args = p.parse_args(argv)
    text = dumps(shipped())
    if args.check:
        if not COMMITTED.exists() or COMMITTED.read_text() != text:
            print(f"{COMMITTED} is stale: run `python -m serve_app.openapi`", file=sys.stderr)
            return 1
        return 0
    COMMITTED.write_text(text)
    print(f"wrote {COMMITTED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
