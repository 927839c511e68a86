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
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

import clinie
from clinie.analysis import NoteAnalysis
from clinie.schema import ErrorBody, NoteError, NoteResult
from deployments.fast_tier.engine import InputError, validate_text
from deployments.llm_tier.engine import LLMTimeout, LLMUnavailable
from router import LoadState, UnknownPolicy
from router.host import RouterHost
from router.policies import Decision
from serve_app import openapi, viewer
from serve_app.admission import Admission, Refusal, Ticket
from serve_app.config import MAX_DEADLINE_MS, AppConfig
from serve_app.grpc_service import InvalidRequest
from serve_app.metrics import Metrics
from serve_app.orchestrate import LLMFailure, finish
from serve_app.replicas import serve_replicas

log = logging.getLogger("clinie.ingress")


# -- wire types (HTTP bodies; gRPC mirrors them in clinie/proto/clinie.proto) ---------------


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


# Deeper than any request body needs (the deepest, a batch note, is 3 levels); a bound well
# below Python's recursion limit, so a hostile body is a 400, not a RecursionError.
MAX_JSON_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (containers only: strings cost nothing)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _parse_json(body: bytes) -> Any:
    """The body's JSON, or ApiError 400 `malformed_json` (bad UTF-8, bad JSON, nested too deep)."""
    too_deep = ApiError(400, "malformed_json", f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "malformed_json", "request body is not valid UTF-8 JSON") from None
    except RecursionError:  # deeper than the parser's own stack allows
        raise too_deep from None
    if _depth(payload) > MAX_JSON_DEPTH:
        raise too_deep
    return payload


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


# -- the orchestration's view of the tiers: the router in this process, the LLM tier by handle --


class _HandleTiers:
    def __init__(self, router: RouterHost, llm: DeploymentHandle | None, owner: Ingress):
        self.router, self.llm, self.owner = router, llm, owner

    def load(self) -> LoadState:
        return self.owner.llm_load()

    async def route(
        self, analysis: Any, policy: str | None, load: LoadState, deadline_ms: float | None
    ) -> tuple[Decision, dict[str, float], list[tuple[int, int]]]:
        # Sub-millisecond and CPU-only: run here rather than pay a hop that ships the analysis.
        return self.router.route(analysis, policy, load, deadline_ms)

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


def _fast_replicas() -> tuple[int, int, int]:
    """(running, starting, max_replicas) of this application's FastTier, from the controller."""
    fast = serve_replicas(serve.get_replica_context().app_name)["FastTier"]
    return fast.running, fast.starting, fast.max_replicas


# A fast-tier replica that died or became unreachable under a request: extraction is a pure
# function, so the request is tried once more (the handle picks a live replica).
_REPLICA_GONE = (RayActorError, ActorUnavailableError)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    """HTTP + gRPC transport, admission, the router (policies via `user_config`), orchestration."""

    def __init__(
        self,
        fast: DeploymentHandle,
        llm: DeploymentHandle | None,
        config: dict[str, Any],
        ood_stats: str | None = None,
    ):
        self.cfg = AppConfig.model_validate(config)
        self.fast, self.llm = fast, llm
        self.router = RouterHost(ood_stats)
        # The LLM model id is known from the config; the fast tier's from its first answer (or
        # /readyz). Until both are known, a policy calibrated for particular models does not escalate.
        self._llm_model_id = self.cfg.llm.model_id if llm is not None else None
        self._fast_model_id: str | None = None
        self.router.router.set_running_models(fast=None, llm=self._llm_model_id)
        self.metrics = Metrics()
        self.tiers = _HandleTiers(self.router, llm, self)
        keys = os.environ.get(self.cfg.api_keys_env, "")
        self.api_keys = [k.strip().encode() for k in keys.split(",") if k.strip()]
        self.admission = Admission(self.cfg.admission)
        self.llm_in_flight = 0
        self.llm_latencies: deque[float] = deque(maxlen=64)
        self.llm_state: dict[str, Any] = {"state": "absent" if llm is None else "starting"}
        self._llm_state_at = 0.0
        self._poller: asyncio.Task[None] | None = None
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

    def _fast_model(self, model_id: str) -> None:
        """The fast tier's model id, as its replicas report it (tells the router what runs)."""
        if model_id != self._fast_model_id:
            self._fast_model_id = model_id
            self.router.router.set_running_models(fast=model_id, llm=self._llm_model_id)

    # -- shared helpers ------------------------------------------------------------------------

    def llm_load(self) -> LoadState:
        lat = sorted(self.llm_latencies)
        return LoadState(
            llm_available=self.llm is not None and self.llm_state.get("state") == "ready",
            llm_in_flight=self.llm_in_flight,
            llm_p50_ms=lat[len(lat) // 2] if lat else None,
        )

    def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        """Every couple of seconds: the fast tier's replica counts (admission counts running and
        starting capacity) and the LLM tier's state (routing avoids a tier that is not ready)."""
        while True:
            try:
                running, starting, most = await asyncio.to_thread(_fast_replicas)
                self.admission.set_replicas(running, starting, most)
                self.metrics.replicas.labels("FastTier", "running").set(running)
                self.metrics.replicas.labels("FastTier", "starting").set(starting)
            except Exception as exc:  # the controller is busy or restarting: keep the last counts
                log.warning("replica poll failed: %s", type(exc).__name__)
            await self._refresh_llm()
            await asyncio.sleep(self.cfg.admission.poll_interval_s)

    async def _refresh_llm(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.llm is None or (not force and now - self._llm_state_at < 1.0):
            return
        self._llm_state_at = now
        try:
            self.llm_state = await asyncio.wait_for(self.llm.status.remote(), 2.0)
        except Exception as exc:  # the LLM replica is gone or stuck: route around it
            self.llm_state = {"state": "unreachable", "error": type(exc).__name__}

    def _check_policy(self, policy: str | None) -> None:
        try:
            self.router.router.check(policy)
        except UnknownPolicy as exc:
            raise ApiError(400, "unknown_policy", exc.message) from None

    def _authorize(self, presented: str | None) -> None:
        if not self.api_keys:
            return
        given = (presented or "").removeprefix("Bearer ").strip().encode()
        if not any(hmac.compare_digest(given, k) for k in self.api_keys):
            raise ApiError(401, "unauthorized", "missing or invalid API key")

    def _deadline(self, requested: float | None) -> float:
        return requested if requested is not None else self.cfg.default_deadline_ms

    async def _admit(self, notes: int, chars: int, deadline_ms: float) -> Ticket:
        """Refuse, before any model work, a request that cannot finish inside its deadline (see
        serve_app/admission.py); otherwise its work counts as in flight until released.

        A refusal is paced (`refusal_delay_ms`, well inside the 0.5 s a refusal may take): a
        client that ignores `Retry-After` and asks again at once would otherwise spend the cores
        the admitted requests need on a storm of refusals. Waiting costs this replica nothing."""
        self._start_poller()
        decision = self.admission.admit(notes, chars, deadline_ms)
        if isinstance(decision, Refusal):
            self.metrics.rejected.labels(decision.reason).inc()
            await asyncio.sleep(self.cfg.admission.refusal_delay_ms / 1000)
            raise ApiError(429, "overloaded", decision.message, decision.retry_after_s)
        self.metrics.in_flight.labels("bert").set(self.admission.in_flight_notes)
        return decision

    def _validate(self, text: object) -> str:
        """The note's text, or an ApiError (413 for a note over the limit, 400 otherwise)."""
        try:
            return validate_text(text, self.cfg.limits.max_note_chars)
        except InputError as exc:
            raise ApiError(413 if exc.code == "note_too_long" else 400, exc.code, exc.message) from None

    async def _fast_pass(self, note_id: str | None, valid: str, remaining_s: float) -> NoteAnalysis:
        """The fast tier's analysis within `remaining_s`; ApiError 503/504 otherwise."""
        t_end = time.perf_counter() + remaining_s
        for attempt in (1, 2):
            try:
                left = t_end - time.perf_counter()
                if left <= 0:
                    raise TimeoutError
                return await asyncio.wait_for(self.fast.analyze.remote(note_id, valid), left)
            except BackPressureError:
                self.metrics.rejected.labels("fast_queue_full").inc()
                raise ApiError(503, "overloaded", "the fast tier's queue is full; retry later", 1) from None
            except TimeoutError:
                self.metrics.rejected.labels("deadline_exceeded").inc()
                raise ApiError(504, "deadline_exceeded", "the fast tier did not answer within the deadline") from None
            except _REPLICA_GONE as exc:
                log.warning("fast-tier replica lost under a request (%s), attempt %d", type(exc).__name__, attempt)
        self.metrics.rejected.labels("fast_replica_lost").inc()
        raise ApiError(503, "unavailable", "the fast tier lost its replica; retry", 1)

    async def _one(
        self, note_id: str | None, valid: str, policy: str | None, deadline_ms: float, t0: float, ticket: Ticket
    ) -> NoteResult:
        """One validated, admitted note; raises ApiError for what fails the whole note."""
        remaining_s = deadline_ms / 1000 - (time.perf_counter() - t0)
        try:
            analysis = await self._fast_pass(note_id, valid, remaining_s)
        finally:
            self.admission.done(ticket)  # measured against its prediction, answered or not
            self.admission.release(1, len(valid))
            self.metrics.in_flight.labels("bert").set(self.admission.in_flight_notes)
        self.admission.record(len(valid), analysis.elapsed_ms)
        self._fast_model(analysis.model_tag)
        try:
            result = await finish(self.tiers, analysis, policy, deadline_ms, started=t0)
        except UnknownPolicy as exc:
            raise ApiError(400, "unknown_policy", exc.message) from None
        costs = self.router.router.config.costs
        self.metrics.observe_result(result, costs.fast_cost_per_call, costs.llm_cost_per_token)
        return result

    async def _extract(self, req: ExtractRequest) -> NoteResult:
        t0 = time.perf_counter()
        self._check_policy(req.policy)
        valid = self._validate(req.text)  # bad input is a 4xx even when the service is busy
        deadline = self._deadline(req.deadline_ms)
        ticket = await self._admit(1, len(valid), deadline)
        return await self._one(req.note_id, valid, req.policy, deadline, t0, ticket)

    async def _extract_batch(self, req: ExtractBatchRequest) -> list[NoteResult | NoteError]:
        t0 = time.perf_counter()
        if len(req.notes) > self.cfg.limits.max_batch_notes:
            raise ApiError(
                413,
                "batch_too_large",
                f"batch has {len(req.notes)} notes; the limit is {self.cfg.limits.max_batch_notes}",
            )
        self._check_policy(req.policy)
        checked: list[str | ApiError] = []
        for n in req.notes:
            try:
                checked.append(self._validate(n.text))
            except ApiError as exc:
                checked.append(exc)
        valid = [v for v in checked if isinstance(v, str)]
        deadline = self._deadline(req.deadline_ms)
        # a batch of only bad notes gets its error slots, busy or not
        ticket = await self._admit(len(valid), sum(len(v) for v in valid), deadline) if valid else None

        async def slot(n: BatchNote, v: str | ApiError) -> NoteResult | NoteError:
            try:
                if isinstance(v, ApiError):
                    raise v
                assert ticket is not None  # a valid note means the batch was admitted
                return await self._one(n.note_id, v, req.policy, deadline, t0, ticket)
            except ApiError as exc:
                self.metrics.note_errors.labels(exc.code).inc()
                return NoteError(note_id=n.note_id, error=ErrorBody(code=exc.code, message=exc.message))

        return list(await asyncio.gather(*(slot(n, v) for n, v in zip(req.notes, checked, strict=True))))

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
            payload = _parse_json(bytes(body))
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
            list(router.known), router.config.default_policy, bool(self.api_keys), request.scope.get("root_path", "")
        )
        headers = {**viewer.HEADERS, "content-security-policy": viewer.content_security_policy()}
        return HTMLResponse(page, headers=headers)

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
            info = await asyncio.wait_for(self.fast.info.remote(), 5.0)
            comps["fast_tier"] = {"state": "ready", "model": info["model"]}  # an id, never a path
            self._fast_model(info["model"])
        except Exception as exc:
            comps["fast_tier"] = {"state": "unavailable", "error": type(exc).__name__}
            missing.append("fast_tier")
        comps["router"] = {"state": "ready", **self.router.status()}
        if not comps["router"]["models"]["match"]:
            # Serving still works; the policies' measured gains are for other models, so those
            # policies answer from the fast tier (route.reason `uncalibrated_models`).
            body["policy_models_mismatch"] = comps["router"]["models"]["mismatches"]
        comps["admission"] = self.admission.snapshot()
        await self._refresh_llm(force=True)
        comps["llm_tier"] = self.llm_state
        if self.llm_state.get("state") != "ready":
            body["degraded"] = ["llm_tier"]
            if strict:
                missing.append("llm_tier")
        body["ready"] = not missing
        return JSONResponse(body, status_code=200 if not missing else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint(self) -> Response:
        self._start_poller()
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
        from clinie import grpc_convert as G
        from clinie.proto import clinie_pb2 as pb

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
