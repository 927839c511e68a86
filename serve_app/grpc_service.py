"""Registration of the gRPC service with Ray Serve's gRPC proxy (`grpc_servicer_functions`).

The same handlers as the generated `add_ClinieServicer_to_server`, but with request parsing that
cannot fail: a message protobuf refuses to parse (e.g. a string field with invalid UTF-8) would
otherwise end as an UNKNOWN status from inside the proxy. Here it reaches the ingress as an
`InvalidRequest`, which answers INVALID_ARGUMENT with the contract's JSON error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from clinie.proto import clinie_pb2 as pb

SERVICE = "clinie.v1.Clinie"


@dataclass(frozen=True)
class InvalidRequest:
    """A request body that did not parse; `message` says why (never quotes the bytes)."""

    message: str


def _lenient(message_cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            reason = "a string field is not valid UTF-8" if "UTF-8" in str(exc) else "malformed protobuf"
            return InvalidRequest(f"request is not a valid {message_cls.DESCRIPTOR.name}: {reason}")

    return parse


def add_ClinieServicer_to_server(servicer: Any, server: Any) -> None:
    handlers = {
        "Extract": grpc.unary_unary_rpc_method_handler(
            servicer.Extract,
            request_deserializer=_lenient(pb.ExtractRequest),
            response_serializer=pb.NoteReply.SerializeToString,
        ),
        "ExtractBatch": grpc.unary_unary_rpc_method_handler(
            servicer.ExtractBatch,
            request_deserializer=_lenient(pb.ExtractBatchRequest),
            response_serializer=pb.ExtractBatchReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(SERVICE, handlers)
