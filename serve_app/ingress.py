"""The ingress deployment: HTTP (FastAPI) and gRPC on one class, per service-contract.md.

Transport only: API keys, body limits and parsing (serve_app/wire.py), readiness, metrics and the
OpenAPI document; the notes go to a `NoteService` (serve_app/service.py: admission, the fast
tier, the router, the LLM tier). Every accepted request ends in a result or an explicit error:
- bad input: 4xx (gRPC INVALID_ARGUMENT) with `{"error": {"code", "message"}}`; messages name the
  field and the rule, never the note text (pydantic's echo of input values is dropped);
- overload: 429 (our admission) or 503 (a full deployment queue), both with `Retry-After`
  (gRPC RESOURCE_EXHAUSTED), decided before any model work;
- a slow, absent or failing LLM tier: the fast tier's answer with `route.reason` saying why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

import clinie
from clinie.paths import repo_path
from router.host import RouterHost
from serve_app import openapi, viewer
from serve_app.config import MAX_DEADLINE_MS, AppConfig
from serve_app.grpc_service import InvalidRequest
from serve_app.metrics import Metrics
from serve_app.service import NoteService
from serve_app.shedding import PACED_HEADER, PACED_VALUE
from serve_app.tenants import RateLimited, Tenants, Unauthorized
from serve_app.wire import (
    ApiError,
    ExtractBatchRequest,
    ExtractRequest,
    parse_json,
    safe_validation_message,
    spent_ms,
)

log = logging.getLogger("clinie.ingress")


app = FastAPI(
    title="clinie",
    version=clinie.__version__,
    description="Clinical information extraction: entities, modifiers and relations with exact offsets.",
)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    """HTTP + gRPC transport, API keys, readiness and metrics over a `NoteService` (admission and
    orchestration); the router's policies come in through `user_config`."""

    def __init__(
        self,
        fast: DeploymentHandle,
        llm: DeploymentHandle | None,
        config: dict[str, Any],
        ood_stats: str | None = None,
    ):
        self.cfg = AppConfig.model_validate(config)
        self.router = RouterHost(ood_stats)
        self.metrics = Metrics()
        self.service = NoteService(self.cfg, fast, llm, self.router, self.metrics)
        tenants_file = repo_path(self.cfg.tenants_file) if self.cfg.tenants_file else None
        self.tenants = Tenants(tenants_file, os.environ.get(self.cfg.api_keys_env, ""))
        app.openapi = self._openapi  # type: ignore[method-assign]

    def _openapi(self) -> dict[str, Any]:
        """The OpenAPI document of this replica: its running policy names and limits."""
        limits = self.cfg.limits
        return openapi.build(
            title=app.title,
            version=app.version,
            description=app.description or "",
            policies=list(self.router.router.known),
            max_note_chars=limits.max_note_chars,
            max_batch_notes=limits.max_batch_notes,
            max_body_bytes=limits.max_body_bytes,
            max_deadline_ms=MAX_DEADLINE_MS,
            default_deadline_ms=self.cfg.default_deadline_ms,
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's `user_config`: the router's policies (hot reload)."""
        self.router.reconfigure(user_config)

    def _authorize(self, presented: str | None) -> str | None:
        """The caller's tenant (None when the service is open); ApiError 401 otherwise."""
        try:
            return self.tenants.tenant_of(presented)
        except Unauthorized:
            raise ApiError(401, "unauthorized", "missing or invalid API key") from None

    def _spend(self, tenant: str | None, req: ExtractRequest | ExtractBatchRequest) -> None:
        """The tenant's rate limit, counted in notes, before any model work; ApiError 429 over it."""
        try:
            self.tenants.spend(tenant, len(req.notes) if isinstance(req, ExtractBatchRequest) else 1)
        except RateLimited as exc:
            self.metrics.rejected.labels("rate_limited").inc()
            raise ApiError(429, "rate_limited", str(exc), exc.retry_after_s) from None

    async def _http(self, request: Request, endpoint: str, model: type[BaseModel]) -> Response:
        status = 200
        try:
            tenant = self._authorize(request.headers.get("authorization") or request.headers.get("x-api-key"))
            declared = request.headers.get("content-length")
            limit = self.cfg.limits.max_body_bytes
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise ApiError(413, "body_too_large", f"request body is over {limit} bytes")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, "body_too_large", f"request body is over {limit} bytes")
            payload = parse_json(bytes(body))
            if not isinstance(payload, dict):
                raise ApiError(400, "invalid_request", "request body must be a JSON object")
            try:
                req = model.model_validate(payload)
            except ValidationError as exc:
                raise ApiError(400, "invalid_request", safe_validation_message(exc)) from None
            self._spend(tenant, req)  # type: ignore[arg-type]  # the endpoint's model is one of the two
            spent = spent_ms(request.headers.get("x-clinie-spent-ms"))
            # behind Ray's proxy with serve_app/proxy_shed.py: it paces refusals and reads hints
            paced = request.headers.get(PACED_HEADER) == PACED_VALUE
            if isinstance(req, ExtractRequest):
                out: dict[str, Any] = (await self.service.extract(req, spent, paced)).model_dump(mode="json")
            else:
                assert isinstance(req, ExtractBatchRequest)
                results = await self.service.extract_batch(req, spent, paced)
                out = {"results": [r.model_dump(mode="json") for r in results]}
            return JSONResponse(out)
        except ApiError as exc:
            status = exc.status
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.http_headers())
        except Exception as exc:  # never a bare 500 without a body; never the note in the log
            status = 500
            log.error("internal error in %s: %s", endpoint, type(exc).__name__)
            return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)
        finally:
            self.metrics.requests.labels("http", endpoint, str(status)).inc()

    # The document at /openapi.json is serve_app/openapi.py's (see _openapi), not FastAPI's guess.
    @app.post("/v1/extract", summary="Extract one note")
    async def extract(self, request: Request) -> Response:
        return await self._http(request, "extract", ExtractRequest)

    @app.post("/v1/extract/batch", summary="Extract a batch of notes (one bad note fails only its slot)")
    async def extract_batch(self, request: Request) -> Response:
        return await self._http(request, "extract_batch", ExtractBatchRequest)

    @app.get("/", include_in_schema=False)
    async def web_viewer(self, request: Request) -> Response:
        """The web viewer (serve_app/viewer): a page for people; its data goes through /v1/extract."""
        router = self.router.router
        page = viewer.render_page(
            list(router.known), router.config.default_policy, self.tenants.enabled, request.scope.get("root_path", "")
        )
        headers = {**viewer.HEADERS, "content-security-policy": viewer.content_security_policy()}
        return HTMLResponse(page, headers=headers)

    @app.get("/healthz", summary="Process alive")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Models loaded and able to answer; names what is missing")
    async def readyz(self, request: Request, strict: bool = False) -> Response:
        """200 when the fast tier and the router answer (the service can serve every request); the
        body lists each component. The LLM tier is optional for readiness (escalations fall back to
        the fast tier) unless `?strict=true`. With API keys configured, a caller without one (a
        probe) gets the verdict and what is missing, not the components."""
        body: dict[str, Any] = {"components": {}, "missing": []}
        try:
            self._authorize(request.headers.get("authorization") or request.headers.get("x-api-key"))
            detailed = True
        except ApiError:
            detailed = False
        comps, missing = body["components"], body["missing"]
        try:
            info = await asyncio.wait_for(self.service.fast.info.remote(), 5.0)
            comps["fast_tier"] = {"state": "ready", "model": info["model"]}  # an id, never a path
            self.service.fast_model(info["model"])
        except Exception as exc:
            comps["fast_tier"] = {"state": "unavailable", "error": type(exc).__name__}
            missing.append("fast_tier")
        comps["router"] = {"state": "ready", **self.router.status()}
        if not comps["router"]["models"]["match"]:
            # Serving still works; the policies' measured gains are for other models, so those
            # policies answer from the fast tier (route.reason `uncalibrated_models`).
            body["policy_models_mismatch"] = comps["router"]["models"]["mismatches"]
        comps["admission"] = self.service.admission.snapshot()
        await self.service.refresh_llm(force=True)
        comps["llm_tier"] = self.service.llm_state
        if self.service.llm_state.get("state") != "ready":
            body["degraded"] = ["llm_tier"]
            if strict:
                missing.append("llm_tier")
        body["ready"] = not missing
        if not detailed:
            body = {"ready": body["ready"], "components": {}, "missing": missing}
        return JSONResponse(body, status_code=200 if not missing else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint(self) -> Response:
        self.service.start_poller()
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # -- gRPC (Ray Serve's gRPC proxy calls these by RPC name) ---------------------------------

    def _grpc_auth(self, grpc_context: Any) -> str | None:
        meta = dict(grpc_context.invocation_metadata() or []) if grpc_context is not None else {}
        return self._authorize(meta.get("authorization") or meta.get("x-api-key"))

    def _grpc_error(self, grpc_context: Any, exc: ApiError) -> None:
        import grpc

        grpc_context.set_code(getattr(grpc.StatusCode, exc.grpc_code))
        grpc_context.set_details(json.dumps(exc.body()))
        if exc.retry_after:
            grpc_context.set_trailing_metadata([("retry-after", str(exc.retry_after))])

    async def _grpc(self, method: str, request: Any, grpc_context: Any) -> Any:
        """One gRPC call: auth, parse, validate, answer; errors set the status code and details
        (the contract's JSON error) and return an empty reply of the method's type."""
        from clinie import grpc_convert as G
        from clinie.proto import clinie_pb2 as pb

        batch = method == "ExtractBatch"
        status = "OK"
        try:
            tenant = self._grpc_auth(grpc_context)
            if isinstance(request, InvalidRequest):
                raise ApiError(400, "invalid_request", request.message)
            fields = G.batch_request_from_proto(request) if batch else G.request_from_proto(request)
            try:
                req = (ExtractBatchRequest if batch else ExtractRequest).model_validate(fields)
            except ValidationError as exc:
                raise ApiError(400, "invalid_request", safe_validation_message(exc)) from None
            self._spend(tenant, req)
            if isinstance(req, ExtractBatchRequest):
                return G.batch_reply_to_proto(await self.service.extract_batch(req))
            assert isinstance(req, ExtractRequest)
            return G.result_to_proto(await self.service.extract(req))
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
