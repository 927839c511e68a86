"""The gRPC surface: committed generated code is current, and results survive proto and back unchanged."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from pydantic import BaseModel

from clinie.grpc_convert import (
    batch_reply_to_proto,
    batch_request_from_proto,
    proto_to_dict,
    proto_to_result,
    request_from_proto,
    result_to_proto,
)
from clinie.proto import clinie_pb2 as pb
from clinie.proto import clinie_pb2_grpc as pb_grpc
from clinie.proto.codegen import GENERATED, PROTO_DIR, generate
from clinie.schema import EntitySpan, ErrorBody, NoteError, NoteResult, Relation, Route, TextRange


def _full_result(note_id: str | None = "abc-1") -> NoteResult:
    # Floats that do not survive a float32 or a decimal rounding, offsets at 0 and
    # escalated=False (zero values that protobuf JSON omits by default), and an integral timing.
    return NoteResult.model_validate(
        {
            "note_id": note_id,
            "entities": [
                {"id": "T1", "type": "problem", "start": 7, "end": 17, "text": "chest pain", "confidence": 0.1 + 0.2},
                {"id": "T3", "type": "drug", "start": 0, "end": 7, "text": "aspirin", "confidence": 1 / 3},
            ],
            "modifiers": [
                {"id": "T2", "type": "negation", "start": 0, "end": 6, "text": "Denies", "confidence": 0.987654321},
                {"id": "T4", "type": "dosage", "start": 8, "end": 14, "text": "81 mg.", "confidence": 1.0},
            ],
            "relations": [
                {"type": "hasAttr", "entity": "T1", "modifier": "T2", "confidence": 0.97},
                {"type": "hasAttr", "entity": "T3", "modifier": "T4", "confidence": 2**-40},
            ],
            "route": {
                "tier": "bert+llm",
                "escalated": True,
                "reason": "low_confidence",
                "signals": {"min_confidence": 0.123456789012345, "ood": -3.5, "zero": 0.0, "big": 1e300},
                "escalated_ranges": [{"start": 0, "end": 21}, {"start": 40, "end": 62}],
            },
            "models": {"bert": "clinie-bert@0.1.0", "llm": "qwen@2"},
            "timings_ms": {"bert": 12.3, "total": 14.0},
        }
    )


def _contract_json(result: NoteResult | NoteError) -> dict[str, Any]:
    return result.model_dump(mode="json")


# (a) the committed generated modules are what the committed .proto compiles to


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in GENERATED:
        fresh, committed = (tmp_path / name).read_bytes(), (PROTO_DIR / name).read_bytes()
        assert fresh == committed, (
            f"clinie/proto/{name} is stale against clinie.proto (or grpcio-tools changed): "
            "run `python -m clinie.proto.codegen` and commit the result"
        )


def test_generated_grpc_module_imports_the_package_path() -> None:
    text = (PROTO_DIR / "clinie_pb2_grpc.py").read_text()
    assert "from clinie.proto import clinie_pb2" in text
    assert "\nimport clinie_pb2" not in text


def test_proto_fields_match_the_pydantic_wire_types() -> None:
    # result_to_proto copies field by field; a field added to one side only would be dropped silently.
    pairs: list[tuple[type[BaseModel], Any]] = [
        (EntitySpan, pb.Span),
        (Relation, pb.Relation),
        (Route, pb.Route),
        (TextRange, pb.TextRange),
        (NoteResult, pb.NoteResult),
        (ErrorBody, pb.Error),
    ]
    for model, message in pairs:
        assert set(model.model_fields) == {f.name for f in message.DESCRIPTOR.fields}, model.__name__
    assert set(NoteError.model_fields) <= {f.name for f in pb.NoteReply.DESCRIPTOR.fields}


# (b) round trips


def test_result_round_trip_is_exact() -> None:
    result = _full_result()
    reply = result_to_proto(result)
    assert reply.WhichOneof("outcome") == "result"
    assert reply.note_id == "abc-1" and reply.result.note_id == "abc-1"
    assert proto_to_dict(reply) == _contract_json(result)
    assert proto_to_result(reply) == result
    # ... and through the wire bytes as well.
    again = pb.NoteReply.FromString(reply.SerializeToString())
    assert proto_to_dict(again) == _contract_json(result)


def test_floats_compare_bit_for_bit() -> None:
    result = _full_result()
    back = proto_to_dict(result_to_proto(result))
    assert back["entities"][0]["confidence"] == 0.1 + 0.2
    assert back["entities"][1]["confidence"] == 1 / 3
    assert back["relations"][1]["confidence"] == 2**-40
    assert back["route"]["signals"]["min_confidence"] == 0.123456789012345
    assert back["route"]["signals"]["big"] == 1e300
    assert back["timings_ms"] == {"bert": 12.3, "total": 14.0}


def test_json_mapping_of_a_result_is_the_contract_json() -> None:
    # What clinie.proto documents: MessageToDict of a NoteResult is the contract JSON, key for key.
    for note_id in ("abc-1", None):
        result = _full_result(note_id)
        mapped = json_format.MessageToDict(
            result_to_proto(result).result,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        expected = _contract_json(result)
        if note_id is None:
            del expected["note_id"]  # the one documented difference: absent instead of null
        assert mapped == expected


def test_minimal_result_round_trip() -> None:
    result = NoteResult(route=Route(tier="bert", escalated=False, reason="policy:fast-only"))
    reply = result_to_proto(result)
    assert proto_to_dict(reply) == _contract_json(result)
    assert proto_to_dict(reply)["entities"] == [] and proto_to_dict(reply)["models"] == {}


def test_error_round_trip() -> None:
    err = NoteError(note_id="n7", error=ErrorBody(code="llm_timeout", message="the note missed its deadline"))
    reply = result_to_proto(err)
    assert reply.WhichOneof("outcome") == "error"
    assert proto_to_dict(reply) == {
        "note_id": "n7",
        "error": {"code": "llm_timeout", "message": "the note missed its deadline"},
    }
    assert proto_to_result(reply) == err
    # The JSON mapping of an error reply is the contract's error slot.
    assert json_format.MessageToDict(reply, preserving_proto_field_name=True) == _contract_json(err)


def test_note_id_none_stays_none_and_empty_stays_empty() -> None:
    result = _full_result(note_id=None)
    reply = result_to_proto(result)
    assert not reply.HasField("note_id") and not reply.result.HasField("note_id")
    assert proto_to_dict(reply)["note_id"] is None

    err_reply = result_to_proto(NoteError(error=ErrorBody(code="empty_text", message="text is empty")))
    assert not err_reply.HasField("note_id")
    assert proto_to_dict(err_reply) == {"note_id": None, "error": {"code": "empty_text", "message": "text is empty"}}

    # Presence tells "" from absent, as JSON tells "" from null.
    assert proto_to_dict(result_to_proto(_full_result(note_id="")))["note_id"] == ""


def test_note_id_on_either_level_is_read() -> None:
    result = _full_result("abc-1")
    only_inner = result_to_proto(result)
    only_inner.ClearField("note_id")
    assert proto_to_dict(only_inner)["note_id"] == "abc-1"
    only_outer = result_to_proto(result)
    only_outer.result.ClearField("note_id")
    assert proto_to_dict(only_outer)["note_id"] == "abc-1"


def test_malformed_replies_fail_loudly() -> None:
    with pytest.raises(ValueError, match="neither"):
        proto_to_dict(pb.NoteReply(note_id="x"))
    clash = result_to_proto(_full_result("a"))
    clash.note_id = "b"
    with pytest.raises(ValueError, match="differs"):
        proto_to_dict(clash)
    no_route = result_to_proto(_full_result())
    no_route.result.ClearField("route")
    with pytest.raises(ValueError):
        proto_to_dict(no_route)


def test_request_from_proto() -> None:
    full = pb.ExtractRequest(text="Denies chest pain", note_id="n1", policy="fast-only", deadline_ms=250.5)
    assert request_from_proto(full) == {
        "text": "Denies chest pain",
        "note_id": "n1",
        "policy": "fast-only",
        "deadline_ms": 250.5,
    }
    assert request_from_proto(pb.ExtractRequest(text="x")) == {
        "text": "x",
        "note_id": None,
        "policy": None,
        "deadline_ms": None,
    }
    # An explicit empty policy is a value (an unknown policy for the server to reject), not "default".
    assert request_from_proto(pb.ExtractRequest(text="x", policy=""))["policy"] == ""


def test_batch_request_and_reply() -> None:
    req = pb.ExtractBatchRequest(
        notes=[pb.NoteInput(text="a", note_id="1"), pb.NoteInput(text="b")], policy="default", deadline_ms=0
    )
    assert batch_request_from_proto(req) == {
        "notes": [{"text": "a", "note_id": "1"}, {"text": "b", "note_id": None}],
        "policy": "default",
        "deadline_ms": None,
    }
    answers = [_full_result("1"), NoteError(note_id=None, error=ErrorBody(code="empty_text", message="empty"))]
    reply = batch_reply_to_proto(answers)
    assert [proto_to_dict(r) for r in reply.results] == [_contract_json(a) for a in answers]


# (c) the generated stubs serve


def test_generated_stub_registers_and_serves_over_loopback() -> None:
    service = pb.DESCRIPTOR.services_by_name["Clinie"]
    assert [m.name for m in service.methods] == ["Extract", "ExtractBatch"]
    assert callable(pb_grpc.add_ClinieServicer_to_server)

    class Echo(pb_grpc.ClinieServicer):
        def Extract(self, request: pb.ExtractRequest, context: grpc.ServicerContext) -> pb.NoteReply:
            return result_to_proto(_full_result(request_from_proto(request)["note_id"]))

        def ExtractBatch(self, request: pb.ExtractBatchRequest, context: grpc.ServicerContext) -> pb.ExtractBatchReply:
            return batch_reply_to_proto(_full_result(n["note_id"]) for n in batch_request_from_proto(request)["notes"])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    pb_grpc.add_ClinieServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ClinieStub(channel)
            one = stub.Extract(pb.ExtractRequest(text="Denies chest pain", note_id="z"), timeout=10)
            assert proto_to_dict(one) == _contract_json(_full_result("z"))
            many = stub.ExtractBatch(pb.ExtractBatchRequest(notes=[pb.NoteInput(text="a")]), timeout=10)
            assert [proto_to_dict(r)["note_id"] for r in many.results] == [None]
    finally:
        server.stop(grace=None)
