"""Admission and orchestration of notes for the served application, under the transports.

The ingress (serve_app/ingress.py) is HTTP and gRPC over one `NoteService`: per note, validate ->
admission (serve_app/admission.py: refuse, before any model work, what cannot finish inside its
deadline) -> the fast tier by handle (one retry on a lost replica) -> `serve_app.orchestrate.answer`
over `serve_app.tiers.HandleTiers` (the router in this process, the LLM tier by handle). It also
keeps what admission and routing need to know of the deployments: the fast tier's replica counts
and model id, and the LLM tier's state. Every accepted note ends in a result or an ApiError.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from clinie.analysis import NoteAnalysis
from clinie.errors import InputError
from clinie.schema import ErrorBody, NoteError, NoteResult
from clinie.validation import validate_text
from router import UnknownPolicy
from router.host import RouterHost
from serve_app.admission import Admission, Refusal, Ticket
from serve_app.config import AppConfig
from serve_app.metrics import Metrics
from serve_app.orchestrate import answer
from serve_app.replicas import serve_replicas
from serve_app.shedding import HINT_HEADER, PACE_HEADER, ShedHint
from serve_app.tiers import HandleTiers, LLMLoad
from serve_app.wire import ApiError, BatchNote, ExtractBatchRequest, ExtractRequest

log = logging.getLogger("clinie.ingress")


def _replica_counts() -> tuple[int, int, int, int]:
    """(running, starting, max_replicas) of this application's FastTier, and its running replicas
    of this replica's own deployment (the ingress replicas sharing FastTier), from the controller."""
    ctx = serve.get_replica_context()
    deployments = serve_replicas(ctx.app_name)
    fast = deployments["FastTier"]
    own = deployments.get(ctx.deployment)
    return fast.running, fast.starting, fast.max_replicas, own.running if own is not None else 1


# A fast-tier replica that died or became unreachable under a request: extraction is a pure
# function, so the request is tried once more (the handle picks a live replica).
_REPLICA_GONE = (RayActorError, ActorUnavailableError)


class NoteService:
    """Notes in, results out: admission, the fast pass, routing and the LLM tier, for one ingress."""

    def __init__(
        self,
        cfg: AppConfig,
        fast: DeploymentHandle,
        llm: DeploymentHandle | None,
        router: RouterHost,
        metrics: Metrics,
    ):
        self.cfg, self.fast, self.llm, self.router, self.metrics = cfg, fast, llm, router, metrics
        # The LLM model id is known from the config; the fast tier's from its first answer (or
        # /readyz). Until both are known, a policy calibrated for particular models does not escalate.
        self._llm_model_id = cfg.llm.model_id if llm is not None else None
        self._fast_model_id: str | None = None
        router.router.set_running_models(fast=None, llm=self._llm_model_id)
        self.llm_state: dict[str, Any] = {"state": "absent" if llm is None else "starting"}
        self.llm_load = LLMLoad(on_change=metrics.in_flight.labels("llm").set)
        self.tiers = HandleTiers(
            router, llm, self.llm_load, lambda: self.llm_state.get("state") == "ready", cfg.llm.request_timeout_s
        )
        self.admission = Admission(cfg.admission)
        self._llm_state_at = 0.0
        self._poller: asyncio.Task[None] | None = None

    def fast_model(self, model_id: str) -> None:
        """The fast tier's model id, as its replicas report it (tells the router what runs)."""
        if model_id != self._fast_model_id:
            self._fast_model_id = model_id
            self.router.router.set_running_models(fast=model_id, llm=self._llm_model_id)

    def start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        """Every couple of seconds: the fast tier's replica counts (admission counts running and
        starting capacity) and the LLM tier's state (routing avoids a tier that is not ready)."""
        failing = False
        while True:
            try:
                running, starting, most, ingresses = await asyncio.to_thread(_replica_counts)
                self.admission.set_replicas(running, starting, most, ingresses)
                self.metrics.replicas.labels("FastTier", "running").set(running)
                self.metrics.replicas.labels("FastTier", "starting").set(starting)
                if failing:
                    log.info("replica poll works again")
                failing = False
            except Exception as exc:  # the controller is busy or restarting: keep the last counts
                # once per spell, not every poll (the app being deleted while this replica drains
                # fails every poll until it stops)
                if not failing:
                    log.warning("replica poll failed: %s (keeping the last counts)", type(exc).__name__)
                failing = True
            await self.refresh_llm()
            await asyncio.sleep(self.cfg.admission.poll_interval_s)

    async def refresh_llm(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.llm is None or (not force and now - self._llm_state_at < 1.0):
            return
        self._llm_state_at = now
        try:
            self.llm_state = await asyncio.wait_for(self.llm.status.remote(), 2.0)
        except Exception as exc:  # the LLM replica is gone or stuck: route around it
            self.llm_state = {"state": "unreachable", "error": type(exc).__name__}

    def _check_policy(self, policy: str | None) -> str:
        """The policy's name (the default's for None); an unknown one is a 400 before admission
        (and before the note is looked at)."""
        try:
            return self.router.router.check(policy)
        except UnknownPolicy as exc:
            raise ApiError(400, "unknown_policy", exc.message) from None

    def _deadline(self, requested: float | None) -> float:
        return requested if requested is not None else self.cfg.default_deadline_ms

    async def _admit(
        self,
        notes: int,
        chars: int,
        deadline_ms: float,
        paced: bool = False,
        hint: bool = False,
        policy: str | None = None,
    ) -> Ticket:
        """Refuse, before any model work, a request that cannot finish inside its deadline (see
        serve_app/admission.py); otherwise its work counts as in flight until released.

        A refusal is paced (`refusal_delay_ms`, well inside the 0.5 s a refusal may take): a
        client that ignores `Retry-After` and asks again at once would otherwise spend the cores
        the admitted requests need on a storm of refusals. Waiting costs this replica nothing.
        `paced`: the request came through Ray's proxy with the front-door middleware, which waits
        instead and, from a deadline refusal's hint, refuses like requests itself for a moment
        (serve_app/shedding.py); the refusal is then answered at once, with those headers. `hint`:
        a single-note request (the front door sends batches on whatever the hint), whose `policy`
        as it named it the hint carries."""
        self.start_poller()
        decision = self.admission.admit(notes, chars, deadline_ms)
        if isinstance(decision, Refusal):
            self.metrics.rejected.labels(decision.reason).inc()
            adm = self.cfg.admission
            if not paced:
                await asyncio.sleep(adm.refusal_delay_ms / 1000)
                raise ApiError(429, "overloaded", decision.message, decision.retry_after_s)
            headers = {PACE_HEADER: f"{adm.refusal_delay_ms:g}"}
            shed = self._hint(decision, policy) if hint else None
            if shed is not None:
                headers[HINT_HEADER] = shed.model_dump_json()
            raise ApiError(429, "overloaded", decision.message, decision.retry_after_s, headers)
        self.metrics.in_flight.labels("bert").set(self.admission.in_flight_notes)
        return decision

    def _hint(self, refusal: Refusal, policy: str | None) -> ShedHint | None:
        """The front door's hint of a deadline refusal (None for other refusals, or when off)."""
        adm, ahead, per_char = self.cfg.admission, refusal.ahead_ms, refusal.ms_per_char
        if adm.front_door_hint_ttl_ms <= 0 or ahead is None or per_char is None:
            return None
        if not (math.isfinite(ahead) and math.isfinite(per_char)):
            return None  # nothing running or starting: nothing to drain, let the Ingress decide
        return ShedHint(
            ahead_ms=ahead,
            ms_per_char=per_char,
            ttl_ms=adm.front_door_hint_ttl_ms,
            pace_ms=adm.refusal_delay_ms,
            retry_after_s=adm.retry_after_s,
            default_deadline_ms=self.cfg.default_deadline_ms,
            max_note_chars=self.cfg.limits.max_note_chars,
            max_body_bytes=self.cfg.limits.max_body_bytes,
            policy=policy,
        )

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
        self, note_id: str | None, valid: str, policy: str, deadline_ms: float, t0: float, ticket: Ticket
    ) -> NoteResult:
        """One validated, admitted note; raises ApiError for what fails the whole note."""

        async def fast_pass() -> NoteAnalysis:
            remaining_s = deadline_ms / 1000 - (time.perf_counter() - t0)
            try:
                analysis = await self._fast_pass(note_id, valid, remaining_s)
            finally:
                self.admission.done(ticket)  # measured against its prediction, answered or not
                self.admission.release(1, len(valid))
                self.metrics.in_flight.labels("bert").set(self.admission.in_flight_notes)
            self.admission.record(len(valid), analysis.elapsed_ms)
            self.fast_model(analysis.model_tag)
            return analysis

        try:
            result = await answer(self.tiers, note_id, valid, policy, fast_pass, deadline_ms, started=t0)
        except UnknownPolicy as exc:  # the policy file was reloaded since _check_policy
            raise ApiError(400, "unknown_policy", exc.message) from None
        costs = self.router.router.config.costs
        self.metrics.observe_result(result, costs.fast_cost_per_call, costs.llm_cost_per_token)
        return result

    def _left_ms(self, deadline_ms: float, spent_ms: float) -> float:
        """What the deadline leaves after `spent_ms` used before this replica saw the request (a
        retry by the proxy after a lost Ingress replica); 504 when nothing is left."""
        left = deadline_ms - spent_ms
        if left <= 0:
            self.metrics.rejected.labels("deadline_exceeded").inc()
            raise ApiError(504, "deadline_exceeded", "the deadline passed before the request could be sent again")
        return left

    async def extract(self, req: ExtractRequest, spent_ms: float = 0.0, paced: bool = False) -> NoteResult:
        """One note. `spent_ms`: deadline already used elsewhere (serve_app/proxy_retry.py); the
        deadline still counts from the caller's first attempt. `paced`: see `_admit`."""
        t0 = time.perf_counter() - spent_ms / 1000
        policy = self._check_policy(req.policy)
        valid = self._validate(req.text)  # bad input is a 4xx even when the service is busy
        deadline = self._deadline(req.deadline_ms)
        ticket = await self._admit(1, len(valid), self._left_ms(deadline, spent_ms), paced, True, req.policy)
        return await self._one(req.note_id, valid, policy, deadline, t0, ticket)

    async def extract_batch(
        self, req: ExtractBatchRequest, spent_ms: float = 0.0, paced: bool = False
    ) -> list[NoteResult | NoteError]:
        t0 = time.perf_counter() - spent_ms / 1000
        if len(req.notes) > self.cfg.limits.max_batch_notes:
            raise ApiError(
                413,
                "batch_too_large",
                f"batch has {len(req.notes)} notes; the limit is {self.cfg.limits.max_batch_notes}",
            )
        policy = self._check_policy(req.policy)
        checked: list[str | ApiError] = []
        for n in req.notes:
            try:
                checked.append(self._validate(n.text))
            except ApiError as exc:
                checked.append(exc)
        valid = [v for v in checked if isinstance(v, str)]
        deadline = self._deadline(req.deadline_ms)
        # a batch of only bad notes gets its error slots, busy or not (and however late)
        ticket = (
            await self._admit(len(valid), sum(len(v) for v in valid), self._left_ms(deadline, spent_ms), paced)
            if valid
            else None
        )

        async def slot(n: BatchNote, v: str | ApiError) -> NoteResult | NoteError:
            try:
                if isinstance(v, ApiError):
                    raise v
                assert ticket is not None  # a valid note means the batch was admitted
                return await self._one(n.note_id, v, policy, deadline, t0, ticket)
            except ApiError as exc:
                self.metrics.note_errors.labels(exc.code).inc()
                return NoteError(note_id=n.note_id, error=ErrorBody(code=exc.code, message=exc.message))

        return list(await asyncio.gather(*(slot(n, v) for n, v in zip(req.notes, checked, strict=True))))
