"""One request, one attempt, over HTTP (httpx) or gRPC (grpcio), sync and async.

Every transport takes the HTTP body of the contract (`{"text", "note_id", "policy",
"deadline_ms"}`, or `{"notes": [...], "policy", "deadline_ms"}` for a batch) and returns the
contract's JSON (one result, or `{"results": [...]}`), or raises ClinieError. Retrying is the
client's business (client.py), not theirs. The gRPC side converts with clinie/grpc_convert.py, the
same module the server uses, so both transports return the same dicts for the same answers.

A connection that cannot be made or breaks mid-call is a 503 `unreachable` (the service may be
restarting; extraction is a pure function, so sending again is safe); no answer within the
attempt's timeout is a 504 `timeout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from clinie.client.config import ClientConfig
from clinie.client.errors import ClinieError, from_error_body, from_grpc

PATHS = {"one": "/v1/extract", "batch": "/v1/extract/batch"}


class Transport(Protocol):
    def send(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...
    def close(self) -> None: ...


class AsyncTransport(Protocol):
    async def send(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...
    async def close(self) -> None: ...


def _headers(cfg: ClientConfig) -> dict[str, str]:
    return {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}


def _verify(cfg: ClientConfig) -> Any:
    """httpx's `verify`: the system's trust store, or a context trusting `ca_file`."""
    if not cfg.ca_file:
        return True
    import ssl

    return ssl.create_default_context(cafile=cfg.ca_file)


def _http_answer(response: Any) -> dict[str, Any]:
    if response.status_code == 200:
        return response.json()
    raise from_error_body(response.status_code, response.text, response.headers.get("retry-after"))


def _http_failure(exc: Exception, timeout: float) -> ClinieError:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return ClinieError(504, "timeout", f"no answer within {timeout:g} s", from_service=False)
    return ClinieError(503, "unreachable", f"{type(exc).__name__}: {exc}", from_service=False)


class HttpTransport:
    def __init__(self, cfg: ClientConfig) -> None:
        import httpx

        limits = httpx.Limits(max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections)
        self._http = httpx.Client(base_url=cfg.base_url, headers=_headers(cfg), limits=limits, verify=_verify(cfg))

    def send(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.post(PATHS[kind], json=body, timeout=timeout)
        except httpx.TransportError as exc:
            raise _http_failure(exc, timeout) from None
        return _http_answer(response)

    def close(self) -> None:
        self._http.close()


class AsyncHttpTransport:
    def __init__(self, cfg: ClientConfig) -> None:
        import httpx

        limits = httpx.Limits(max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections)
        self._http = httpx.AsyncClient(base_url=cfg.base_url, headers=_headers(cfg), limits=limits, verify=_verify(cfg))

    async def send(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        import httpx

        try:
            response = await self._http.post(PATHS[kind], json=body, timeout=timeout)
        except httpx.TransportError as exc:
            raise _http_failure(exc, timeout) from None
        return _http_answer(response)

    async def close(self) -> None:
        await self._http.aclose()


# --- gRPC ----------------------------------------------------------------------------------------


def _grpc_request(kind: str, body: dict[str, Any]) -> Any:
    from clinie.proto import clinie_pb2 as pb

    common: dict[str, Any] = {"deadline_ms": float(body.get("deadline_ms") or 0.0)}
    if body.get("policy") is not None:
        common["policy"] = body["policy"]
    if kind == "one":
        note = {k: body[k] for k in ("text", "note_id") if body.get(k) is not None}
        return pb.ExtractRequest(**note, **common)
    notes = [pb.NoteInput(**{k: n[k] for k in ("text", "note_id") if n.get(k) is not None}) for n in body["notes"]]
    return pb.ExtractBatchRequest(notes=notes, **common)


def _grpc_answer(kind: str, reply: Any) -> dict[str, Any]:
    from clinie import grpc_convert

    if kind == "one":
        return grpc_convert.proto_to_dict(reply)
    return {"results": [grpc_convert.proto_to_dict(r) for r in reply.results]}


def _grpc_failure(exc: Any) -> ClinieError:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    err = from_grpc(name, exc.details(), exc.trailing_metadata())
    if name == "UNAVAILABLE" and not err.from_service:  # gRPC's own: no connection (the service's has its body)
        err = ClinieError(503, "unreachable", err.message, err.retry_after, from_service=False)
    return err


def _channel_args(cfg: ClientConfig) -> tuple[str, Any]:
    import grpc

    roots = Path(cfg.ca_file).read_bytes() if cfg.ca_file else None
    creds = grpc.ssl_channel_credentials(root_certificates=roots) if cfg.scheme == "grpcs" else None
    return cfg.target, creds


class GrpcTransport:
    def __init__(self, cfg: ClientConfig) -> None:
        import grpc

        from clinie.proto import clinie_pb2_grpc as pbg

        target, creds = _channel_args(cfg)
        self._channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
        self._stub = pbg.ClinieStub(self._channel)
        self._meta = tuple(_headers(cfg).items())

    def send(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        import grpc

        method = self._stub.Extract if kind == "one" else self._stub.ExtractBatch
        try:
            reply = method(_grpc_request(kind, body), metadata=self._meta, timeout=timeout)
        except grpc.RpcError as exc:
            raise _grpc_failure(exc) from None
        return _grpc_answer(kind, reply)

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcTransport:
    def __init__(self, cfg: ClientConfig) -> None:
        import grpc

        from clinie.proto import clinie_pb2_grpc as pbg

        target, creds = _channel_args(cfg)
        self._channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
        self._stub = pbg.ClinieStub(self._channel)
        self._meta = tuple(_headers(cfg).items())

    async def send(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        import grpc

        method = self._stub.Extract if kind == "one" else self._stub.ExtractBatch
        try:
            reply = await method(_grpc_request(kind, body), metadata=self._meta, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_failure(exc) from None
        return _grpc_answer(kind, reply)

    async def close(self) -> None:
        await self._channel.close()


def make_transport(cfg: ClientConfig) -> Transport:
    return GrpcTransport(cfg) if cfg.scheme.startswith("grpc") else HttpTransport(cfg)


def make_async_transport(cfg: ClientConfig) -> AsyncTransport:
    return AsyncGrpcTransport(cfg) if cfg.scheme.startswith("grpc") else AsyncHttpTransport(cfg)
