"""The ingress deployment: HTTP (FastAPI) and gRPC on one class, per service-contract.md.

Per note: validate -> admission (load shedding) -> fast tier (@serve.batch) -> router -> maybe the
LLM tier -> merge (`serve_app.orchestrate.finish`). Every accepted request ends in a result or an
explicit error:
- bad input: 4xx (gRPC INVALID_ARGUMENT) with `{"error": {"code", "message"}}`; messages name the
  field and the rule, never the note text (pydantic's echo of input values is dropped);
- overload: 429 (our admission) or 503 (a full deployment queue), both with `Retry-After`
  (gRPC RESOURCE_EXHAUSTED), decided before any model work;
- a slow, absent or failing LLM tier: the fast tier's answer with `route.reason` saying why.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections import deque
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

import clinie
from clinie.schema import ErrorBody, NoteError, NoteResult
from deployments.fast_tier.engine import InputError, validate_text
from deployments.llm_tier.engine import LLMTimeout, LLMUnavailable
from router import LoadState, UnknownPolicy
from router.policies import Decision
from serve_app.config import AppConfig
from serve_app.grpc_service import InvalidRequest
from serve_app.metrics import Metrics
from serve_app.orchestrate import LLMFailure, finish

log = logging.getLogger("clinie.ingress")


# -- wire types (HTTP bodies; gRPC mirrors them in serve_app/proto/clinie.proto) ---------------


class ExtractRequest(BaseModel):
    """`POST /v1/extract` body."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(description="The note.")
    note_id: str | None = Field(default=None, max_length=256, description="Echoed back in the result.")
    policy: str | None = Field(default=None, max_length=128, description="Routing policy; default: `default`.")
    deadline_ms: float | None = Field(default=None, gt=0, description="Answer within this many ms (best effort).")


class BatchNote(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Any = Field(default=None, description="The note (a bad one fails only its own slot).")
    note_id: str | None = Field(default=None, max_length=256, description="Echoed back in the slot.")


class ExtractBatchRequest(BaseModel):
    """`POST /v1/extract/batch` body."""

    model_config = ConfigDict(extra="ignore")

    notes: list[BatchNote] = Field(description="Notes, answered in the same order.")
    policy: str | None = Field(default=None, max_length=128, description="Routing policy for every note.")
    deadline_ms: float | None = Field(default=None, gt=0, description="Deadline for the whole batch, ms.")


class ApiError(Exception):
    """A request-level error: HTTP status, gRPC status name, wire code and a safe message."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

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


def _safe_validation_message(exc: ValidationError) -> str:
    """Field path and rule of the first problems, without the input values pydantic would echo."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


app = FastAPI(
    title="clinie",
    version=clinie.__version__,
    description="Clinical information extraction: entities, modifiers and relations with exact offsets.",
)


# -- the orchestration's view of the tiers through handles -----------------------------------


class _HandleTiers:
    def __init__(self, router: DeploymentHandle, llm: DeploymentHandle | None, owner: Ingress):
        self.router, self.llm, self.owner = router, llm, owner

    def load(self) -> LoadState:
        return self.owner.llm_load()

    async def route(
        self, analysis: Any, policy: str | None, load: LoadState, deadline_ms: float | None
    ) -> tuple[Decision, dict[str, float], list[tuple[int, int]]]:
        return await self.router.route.remote(analysis, policy, load, deadline_ms)

    async def llm_extract(
        self,
        note_id: str | None,
        text: str,
        ranges: list[tuple[int, int]] | None,
        timeout_s: float | None,
        reason: str,
    ) -> NoteResult:
        if self.llm is None:
            raise LLMFailure("llm_tier_unavailable")
        owner = self.owner
        owner.llm_in_flight += 1
        owner.metrics.in_flight.labels("llm").set(owner.llm_in_flight)
        t0 = time.perf_counter()
        timeout = timeout_s if timeout_s is not None else owner.cfg.llm.request_timeout_s
        try:
            # The replica enforces the deadline and aborts its engine requests; the outer wait is
            # a backstop (a little longer) for a replica that does not answer at all.
            call = self.llm.extract.remote(note_id, text, ranges, timeout, reason)
            result = await asyncio.wait_for(call, timeout + 5.0)
            owner.llm_latencies.append((time.perf_counter() - t0) * 1000)
            return result
        except (TimeoutError, LLMTimeout):
            raise LLMFailure("llm_timeout") from None
        except BackPressureError:
            raise LLMFailure("llm_overloaded") from None
        except LLMUnavailable:
            raise LLMFailure("llm_tier_unavailable") from None
        except Exception as exc:  # a failing LLM replica must not fail the note: answer fast, say why
            log.warning("LLM tier call failed (%s); answering from the fast tier", type(exc).__name__)
            raise LLMFailure("llm_error") from None
        finally:
            owner.llm_in_flight -= 1
            owner.metrics.in_flight.labels("llm").set(owner.llm_in_flight)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        fast: DeploymentHandle,
        router: DeploymentHandle,
        llm: DeploymentHandle | None,
        config: dict[str, Any],
    ):
        self.cfg = AppConfig.model_validate(config)
        self.fast, self.router, self.llm = fast, router, llm
        self.metrics = Metrics()
        self.tiers = _HandleTiers(router, llm, self)
        keys = os.environ.get(self.cfg.api_keys_env, "")
        self.api_keys = [k.strip().encode() for k in keys.split(",") if k.strip()]
        self.fast_in_flight = 0
        self.llm_in_flight = 0
        self.llm_latencies: deque[float] = deque(maxlen=64)
        self.llm_state: dict[str, Any] = {"state": "absent" if llm is None else "starting"}
        self._done: deque[float] = deque(maxlen=256)  # completion times of fast-tier calls
        self._policies: set[str] = set()
        self._policies_at = 0.0
        self._costs: dict[str, float] = {"llm_cost_per_token": 1.0, "fast_cost_per_call": 0.0}

    # -- shared helpers ------------------------------------------------------------------------

    def llm_load(self) -> LoadState:
        lat = sorted(self.llm_latencies)
        return LoadState(
            llm_available=self.llm is not None and self.llm_state.get("state") == "ready",
            llm_in_flight=self.llm_in_flight,
            llm_p50_ms=lat[len(lat) // 2] if lat else None,
        )

    async def _refresh(self, force: bool = False) -> None:
        """Policy names, cost model and the LLM tier's state, cached for a second."""
        now = time.monotonic()
        if not force and now - self._policies_at < 1.0:
            return
        self._policies_at = now
        self._policies = set(await self.router.known.remote())
        self._costs = await self.router.cost_model.remote()
        if self.llm is not None:
            try:
                self.llm_state = await asyncio.wait_for(self.llm.status.remote(), 2.0)
            except Exception as exc:  # the LLM replica is gone or stuck: route around it
                self.llm_state = {"state": "unreachable", "error": type(exc).__name__}

    async def _check_policy(self, policy: str | None) -> None:
        await self._refresh()
        if policy is not None and policy not in self._policies:
            await self._refresh(force=True)  # a hot reload may have just added it
            if policy not in self._policies:
                known = ", ".join(sorted(self._policies))
                raise ApiError(400, "unknown_policy", f"unknown policy {policy!r}; known policies: {known}")

    def _authorize(self, presented: str | None) -> None:
        if not self.api_keys:
            return
        given = (presented or "").removeprefix("Bearer ").strip().encode()
        if not any(hmac.compare_digest(given, k) for k in self.api_keys):
            raise ApiError(401, "unauthorized", "missing or invalid API key")

    def _admit(self, notes: int) -> None:
        """Refuse now, cheaply, when the work already waiting would not clear in time.

        The wait is that of the notes ahead of this request (its own notes are its service time,
        so a large batch on an idle service is admitted), at the completion rate measured over
        the last 10 s."""
        adm = self.cfg.admission
        if self.fast_in_flight + notes > adm.max_in_flight:
            self.metrics.rejected.labels("in_flight_cap").inc()
            raise ApiError(429, "overloaded", "too many requests in flight; retry later", adm.retry_after_s)
        now = time.monotonic()
        recent = [t for t in self._done if now - t < 10.0]
        if self.fast_in_flight and len(recent) >= 4:
            rate = len(recent) / max(now - recent[0], 1e-3)  # notes per second recently completed
            if self.fast_in_flight / rate * 1000 > adm.max_queue_wait_ms:
                self.metrics.rejected.labels("queue_wait").inc()
                raise ApiError(429, "overloaded", "the service is at capacity; retry later", adm.retry_after_s)

    def _validate(self, text: object) -> str:
        """The note's text, or an ApiError (413 for a note over the limit, 400 otherwise)."""
        try:
            return validate_text(text, self.cfg.limits.max_note_chars)
        except InputError as exc:
            raise ApiError(413 if exc.code == "note_too_long" else 400, exc.code, exc.message) from None

    async def _one(
        self, note_id: str | None, valid: str, policy: str | None, deadline_ms: float | None, t0: float
    ) -> NoteResult:
        """One validated, admitted note; raises ApiError for what fails the whole note."""
        deadline = deadline_ms or self.cfg.default_deadline_ms
        self.fast_in_flight += 1
        self.metrics.in_flight.labels("bert").set(self.fast_in_flight)
        try:
            call = self.fast.analyze.remote(note_id, valid)
            analysis = await (asyncio.wait_for(call, deadline / 1000) if deadline else call)
        except BackPressureError:
            self.metrics.rejected.labels("fast_queue_full").inc()
            raise ApiError(503, "overloaded", "the fast tier's queue is full; retry later", 1) from None
        except TimeoutError:
            raise ApiError(504, "deadline_exceeded", "the fast tier did not answer within the deadline") from None
        finally:
            self.fast_in_flight -= 1
            self.metrics.in_flight.labels("bert").set(self.fast_in_flight)
            self._done.append(time.monotonic())
        try:
            result = await finish(self.tiers, analysis, policy, deadline, started=t0)
        except UnknownPolicy as exc:
            raise ApiError(400, "unknown_policy", exc.message) from None
        self.metrics.observe_result(
            result, self._costs.get("fast_cost_per_call", 0.0), self._costs["llm_cost_per_token"]
        )
        return result

    async def _extract(self, req: ExtractRequest) -> NoteResult:
        t0 = time.perf_counter()
        await self._check_policy(req.policy)
        valid = self._validate(req.text)  # bad input is a 4xx even when the service is busy
        self._admit(1)
        return await self._one(req.note_id, valid, req.policy, req.deadline_ms, t0)

    async def _extract_batch(self, req: ExtractBatchRequest) -> list[NoteResult | NoteError]:
        t0 = time.perf_counter()
        if len(req.notes) > self.cfg.limits.max_batch_notes:
            raise ApiError(
                413,
                "batch_too_large",
                f"batch has {len(req.notes)} notes; the limit is {self.cfg.limits.max_batch_notes}",
            )
        await self._check_policy(req.policy)
        self._admit(len(req.notes))

        async def slot(n: BatchNote) -> NoteResult | NoteError:
            try:
                return await self._one(n.note_id, self._validate(n.text), req.policy, req.deadline_ms, t0)
            except ApiError as exc:
                self.metrics.note_errors.labels(exc.code).inc()
                return NoteError(note_id=n.note_id, error=ErrorBody(code=exc.code, message=exc.message))

        return list(await asyncio.gather(*(slot(n) for n in req.notes)))

    # -- HTTP ----------------------------------------------------------------------------------

    async def _http(self, request: Request, endpoint: str, model: type[BaseModel]) -> Response:
        status = 200
        try:
            self._authorize(request.headers.get("authorization") or request.headers.get("x-api-key"))
            declared = request.headers.get("content-length")
            limit = self.cfg.limits.max_body_bytes
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise ApiError(413, "body_too_large", f"request body is over {limit} bytes")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, "body_too_large", f"request body is over {limit} bytes")
            try:
                payload = json.loads(bytes(body).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ApiError(400, "malformed_json", "request body is not valid UTF-8 JSON") from None
            if not isinstance(payload, dict):
                raise ApiError(400, "invalid_request", "request body must be a JSON object")
            try:
                req = model.model_validate(payload)
            except ValidationError as exc:
                raise ApiError(400, "invalid_request", _safe_validation_message(exc)) from None
            if isinstance(req, ExtractRequest):
                out: dict[str, Any] = (await self._extract(req)).model_dump(mode="json")
            else:
                assert isinstance(req, ExtractBatchRequest)
                out = {"results": [r.model_dump(mode="json") for r in await self._extract_batch(req)]}
            return JSONResponse(out)
        except ApiError as exc:
            status = exc.status
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
        except Exception as exc:  # never a bare 500 without a body; never the note in the log
            status = 500
            log.error("internal error in %s: %s", endpoint, type(exc).__name__)
            return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)
        finally:
            self.metrics.requests.labels("http", endpoint, str(status)).inc()

    @app.post(
        "/v1/extract",
        summary="Extract one note",
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": ExtractRequest.model_json_schema()}}}
        },
        responses={200: {"model": NoteResult}, 400: {"model": dict}, 413: {"model": dict}, 429: {"model": dict}},
    )
    async def extract(self, request: Request) -> Response:
        return await self._http(request, "extract", ExtractRequest)

    @app.post(
        "/v1/extract/batch",
        summary="Extract a batch of notes (one bad note fails only its slot)",
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": ExtractBatchRequest.model_json_schema()}}}
        },
    )
    async def extract_batch(self, request: Request) -> Response:
        return await self._http(request, "extract_batch", ExtractBatchRequest)

    @app.get("/healthz", summary="Process alive")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Models loaded and able to answer; names what is missing")
    async def readyz(self, strict: bool = False) -> Response:
        """200 when the fast tier and the router answer (the service can serve every request); the
        body lists each component. The LLM tier is optional for readiness (escalations fall back to
        the fast tier) unless `?strict=true`."""
        body: dict[str, Any] = {"components": {}, "missing": []}
        comps, missing = body["components"], body["missing"]
        try:
            comps["fast_tier"] = {"state": "ready", **(await asyncio.wait_for(self.fast.info.remote(), 5.0))}
        except Exception as exc:
            comps["fast_tier"] = {"state": "unavailable", "error": type(exc).__name__}
            missing.append("fast_tier")
        try:
            comps["router"] = {"state": "ready", **(await asyncio.wait_for(self.router.status.remote(), 5.0))}
        except Exception as exc:
            comps["router"] = {"state": "unavailable", "error": type(exc).__name__}
            missing.append("router")
        try:
            await self._refresh(force=True)
        except Exception as exc:
            log.warning("readyz refresh failed: %s", type(exc).__name__)
        comps["llm_tier"] = self.llm_state
        if self.llm_state.get("state") != "ready":
            body["degraded"] = ["llm_tier"]
            if strict:
                missing.append("llm_tier")
        body["ready"] = not missing
        return JSONResponse(body, status_code=200 if not missing else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint(self) -> Response:
        try:
            await self._refresh()
        except Exception as exc:
            log.warning("metrics refresh failed: %s", type(exc).__name__)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # -- gRPC (Ray Serve's gRPC proxy calls these by RPC name) ---------------------------------

    def _grpc_auth(self, grpc_context: Any) -> None:
        meta = dict(grpc_context.invocation_metadata() or []) if grpc_context is not None else {}
        self._authorize(meta.get("authorization") or meta.get("x-api-key"))

    def _grpc_error(self, grpc_context: Any, exc: ApiError) -> None:
        import grpc

        grpc_context.set_code(getattr(grpc.StatusCode, exc.grpc_code))
        grpc_context.set_details(json.dumps(exc.body()))
        if exc.retry_after:
            grpc_context.set_trailing_metadata([("retry-after", str(exc.retry_after))])

    async def _grpc(self, method: str, request: Any, grpc_context: Any) -> Any:
        """One gRPC call: auth, parse, validate, answer; errors set the status code and details
        (the contract's JSON error) and return an empty reply of the method's type."""
        from serve_app import grpc_convert as G
        from serve_app.proto import clinie_pb2 as pb

        batch = method == "ExtractBatch"
        status = "OK"
        try:
            self._grpc_auth(grpc_context)
            if isinstance(request, InvalidRequest):
                raise ApiError(400, "invalid_request", request.message)
            fields = G.batch_request_from_proto(request) if batch else G.request_from_proto(request)
            try:
                req = (ExtractBatchRequest if batch else ExtractRequest).model_validate(fields)
            except ValidationError as exc:
                raise ApiError(400, "invalid_request", _safe_validation_message(exc)) from None
            if isinstance(req, ExtractBatchRequest):
                return G.batch_reply_to_proto(await self._extract_batch(req))
            assert isinstance(req, ExtractRequest)
            return G.result_to_proto(await self._extract(req))
        except ApiError as exc:
            status = exc.grpc_code
            self._grpc_error(grpc_context, exc)
            return pb.ExtractBatchReply() if batch else pb.NoteReply(error=pb.Error(code=exc.code, message=exc.message))
        finally:
            self.metrics.requests.labels("grpc", method, status).inc()

    async def Extract(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc("Extract", request, grpc_context)

    async def ExtractBatch(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc("ExtractBatch", request, grpc_context)
