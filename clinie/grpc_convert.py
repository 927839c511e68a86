"""Conversion between the gRPC messages (clinie/proto/clinie.proto) and the wire types of clinie.schema.

The contract promises one result shape over HTTP, gRPC and the CLI; this module is the single
place where the protobuf messages meet the pydantic types, so the two cannot drift apart in more
than one spot (tests/unit/test_proto.py holds both to the same field names and round-trips them).

It imports only clinie.schema and the generated modules (no Ray, no models), so a gRPC client or
a test can use it without the serving stack.

Directions:
- server side: `request_from_proto` / `batch_request_from_proto` turn requests into the same
  dicts the HTTP bodies parse to; `result_to_proto` / `batch_reply_to_proto` turn answers into
  replies. These are built field by field with the message constructors, not through
  json_format.ParseDict: they run once per note on the serving path, and ParseDict walks the
  message in Python.
- client side: `proto_to_result` / `proto_to_dict` read a reply back. They go through the
  canonical protobuf JSON mapping (json_format.MessageToDict), which is exactly what clinie.proto
  promises to equal the contract JSON, and then through pydantic, so a reply that is not a valid
  result fails loudly instead of passing on a half-filled dict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypedDict

from google.protobuf import json_format

from clinie.proto import clinie_pb2 as pb
from clinie.schema import EntitySpan, ErrorBody, ModifierSpan, NoteError, NoteResult, result_json


class ExtractRequestDict(TypedDict):
    """An ExtractRequest as the HTTP body `{"text", "note_id", "policy", "deadline_ms"}` reads."""

    text: str
    note_id: str | None
    policy: str | None
    deadline_ms: float | None


class NoteInputDict(TypedDict):
    """One `{"text", "note_id"}` item of a batch."""

    text: str
    note_id: str | None


class ExtractBatchRequestDict(TypedDict):
    """An ExtractBatchRequest as the HTTP batch body `{"notes", "policy", "deadline_ms"}` reads."""

    notes: list[NoteInputDict]
    policy: str | None
    deadline_ms: float | None


def _optional_str(msg: Any, field: str) -> str | None:
    """A proto3 `optional string` field as Python: None when unset (an empty string is a value)."""
    return getattr(msg, field) if msg.HasField(field) else None


def _deadline(value: float) -> float | None:
    """`deadline_ms` is a plain double whose 0 means "no deadline" (clinie.proto); other values,
    negative ones included, pass through for the server's validation to judge, as over HTTP."""
    return None if value == 0 else value


def request_from_proto(req: pb.ExtractRequest) -> ExtractRequestDict:
    """The fields of an ExtractRequest as the HTTP body has them; absent optional fields are None."""
    return {
        "text": req.text,
        "note_id": _optional_str(req, "note_id"),
        "policy": _optional_str(req, "policy"),
        "deadline_ms": _deadline(req.deadline_ms),
    }


def batch_request_from_proto(req: pb.ExtractBatchRequest) -> ExtractBatchRequestDict:
    """The fields of an ExtractBatchRequest as the HTTP batch body has them, notes in order."""
    return {
        "notes": [{"text": n.text, "note_id": _optional_str(n, "note_id")} for n in req.notes],
        "policy": _optional_str(req, "policy"),
        "deadline_ms": _deadline(req.deadline_ms),
    }


def _span_to_proto(span: EntitySpan | ModifierSpan) -> pb.Span:
    return pb.Span(
        id=span.id, type=span.type, start=span.start, end=span.end, text=span.text, confidence=span.confidence
    )


def result_to_proto(result: NoteResult | NoteError) -> pb.NoteReply:
    """The reply for one note's answer: the `result` or the `error` arm of NoteReply.

    note_id is set on the reply and, for a result, on the inner NoteResult too, so each maps to the
    contract JSON on its own; None leaves it unset (message constructors treat None as unset).
    """
    if isinstance(result, NoteError):
        return pb.NoteReply(
            note_id=result.note_id, error=pb.Error(code=result.error.code, message=result.error.message)
        )
    route = result.route
    return pb.NoteReply(
        note_id=result.note_id,
        result=pb.NoteResult(
            note_id=result.note_id,
            entities=[_span_to_proto(s) for s in result.entities],
            modifiers=[_span_to_proto(s) for s in result.modifiers],
            relations=[
                pb.Relation(type=r.type, entity=r.entity, modifier=r.modifier, confidence=r.confidence)
                for r in result.relations
            ],
            route=pb.Route(
                tier=route.tier,
                escalated=route.escalated,
                reason=route.reason,
                signals=route.signals,
                escalated_ranges=[pb.TextRange(start=r.start, end=r.end) for r in route.escalated_ranges],
            ),
            models=result.models,
            timings_ms=result.timings_ms,
        ),
    )


def batch_reply_to_proto(results: Iterable[NoteResult | NoteError]) -> pb.ExtractBatchReply:
    """The ExtractBatch reply: one NoteReply per note, in the order given."""
    return pb.ExtractBatchReply(results=[result_to_proto(r) for r in results])


def proto_to_result(reply: pb.NoteReply) -> NoteResult | NoteError:
    """Read a NoteReply back into the pydantic wire type it was made from.

    Raises ValueError (pydantic's ValidationError is one) when the reply holds neither arm, when it
    is not a valid result (no route, a relation to a missing span, ...), or when the reply's
    note_id and the inner result's disagree.
    """
    note_id = _optional_str(reply, "note_id")
    outcome = reply.WhichOneof("outcome")
    if outcome == "error":
        return NoteError(note_id=note_id, error=ErrorBody(code=reply.error.code, message=reply.error.message))
    if outcome != "result":
        raise ValueError("NoteReply holds neither a result nor an error")
    # The JSON mapping clinie.proto documents: with zero-valued fields printed, this dict is the
    # contract JSON except that an unset note_id is missing rather than null.
    data: dict[str, Any] = json_format.MessageToDict(
        reply.result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    inner = data.pop("note_id", None)
    if note_id is not None and inner is not None and inner != note_id:
        raise ValueError(f"NoteReply note_id {note_id!r} differs from its result's note_id {inner!r}")
    data["note_id"] = note_id if note_id is not None else inner
    return NoteResult.model_validate(data)


def proto_to_dict(reply: pb.NoteReply) -> dict[str, Any]:
    """The contract JSON of a reply: exactly `NoteResult.model_dump(mode="json")` for a result, or
    `{"note_id": ..., "error": {"code": ..., "message": ...}}` for an error (note_id None when absent)."""
    return result_json(proto_to_result(reply))
