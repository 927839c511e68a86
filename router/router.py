"""The router: named policies from a `RouterConfig`, plus the guards every escalation passes.

`decide` is the whole per-note decision: the named policy's choice, then the load guard (an
unavailable or overloaded LLM tier means the fast tier answers and says why, so nothing ever
queues without bound behind the LLM tier). `reconfigure` swaps the configuration atomically and
keeps the running one when the new one fails validation.

Whoever hosts the router tells it which models run (`set_running_models`); `model_check()` compares
them with the configuration's `calibrated_for` (for `/readyz`), and policies see the outcome as
`RouteContext.models_match` (a `gain` policy does not escalate on a gain measured on other models).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from router.config import PolicyConfigError, RouterConfig
from router.policies import REGISTRY, Decision, Policy, RouteContext
from router.signals import NoteSignals


class UnknownPolicy(KeyError):
    """A request named a policy the router does not have."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(name)
        self.message = f"unknown policy {name!r}; known policies: {', '.join(known)}"

    def __str__(self) -> str:
        return self.message


class LoadState(BaseModel):
    """The LLM tier as the caller sees it right now."""

    llm_available: bool = Field(default=True, description="Whether an LLM tier is deployed and started.")
    llm_in_flight: int = Field(default=0, ge=0, description="LLM-tier requests queued or running.")
    llm_p50_ms: float | None = Field(default=None, ge=0, description="Recent median LLM-tier latency per note.")


@dataclass
class _Counters:
    notes: int = 0
    escalated_notes: int = 0
    sentences: int = 0
    escalated_sentences: int = 0


class Router:
    """Policies by name with hot reload, load guard, model check and realized-rate counters."""

    def __init__(self, config: RouterConfig):
        self._lock = threading.Lock()
        self._counts = _Counters()
        self._running: dict[str, str | None] = {"fast": None, "llm": None}
        self._install(config, previous=None)

    def set_running_models(self, fast: str | None = None, llm: str | None = None) -> None:
        """The model ids of the tiers now serving (fast tier: its `model_tag`; LLM tier:
        `LLMTierConfig.model_id`, known before its engine starts); None = not running / unknown.
        Call again whenever a tier changes; it replaces both."""
        with self._lock:
            self._running = {"fast": fast, "llm": llm}

    @staticmethod
    def _mismatches(config: RouterConfig, running: dict[str, str | None]) -> list[str]:
        want = config.calibrated_for
        if want is None:  # nothing was measured on particular models
            return []
        out = []
        for tier, calibrated in (("fast", want.fast), ("llm", want.llm)):
            now = running[tier]
            if now != calibrated:
                out.append(
                    f"{tier}: calibrated for {calibrated!r}, running {now!r}"
                    if now
                    else f"{tier}: calibrated for {calibrated!r}, running model not reported"
                )
        return out

    def model_check(self) -> dict[str, Any]:
        """For `/readyz`: `{"calibrated_for": {"fast", "llm", "data"} | None, "running": {"fast",
        "llm"}, "match": bool, "mismatches": [str, ...]}`. `match` is true when no model the policy
        file was calibrated for differs from (or is missing among) the running ones."""
        with self._lock:
            config, running = self.config, dict(self._running)
        mismatches = self._mismatches(config, running)
        return {
            "calibrated_for": config.calibrated_for.model_dump() if config.calibrated_for else None,
            "running": running,
            "match": not mismatches,
            "mismatches": mismatches,
        }

    def _install(self, config: RouterConfig, previous: dict[str, Policy] | None) -> None:
        policies: dict[str, Policy] = {}

        def resolve(name: str) -> Policy:
            return policies[name]

        for name, cfg in config.all_policies().items():
            old = (previous or {}).get(name)
            # an unchanged policy keeps its instance (and so its budget bucket's level)
            policies[name] = old if old is not None and old.config == cfg else REGISTRY[cfg.kind](name, cfg, resolve)
        # kept instances are still in use by requests on the running config: point them at the new
        # policies only once all of them exist (a wrapper could otherwise resolve a missing name)
        for policy in policies.values():
            policy._resolve = resolve
        self.config, self.policies = config, policies

    def reconfigure(self, config: RouterConfig | dict) -> None:
        """Swap in a new configuration; on PolicyConfigError the running one stays in force."""
        from router.config import parse_router_config

        new = config if isinstance(config, RouterConfig) else parse_router_config(config)
        with self._lock:
            self._install(new, previous=self.policies)

    @property
    def known(self) -> list[str]:
        return sorted(self.policies)

    def check(self, name: str | None) -> str:
        """The policy name a request gets; raises UnknownPolicy. Only an absent name (None) means the
        default: an empty string is a name, and unknown (service-contract.md)."""
        chosen = self.config.default_policy if name is None else name
        if chosen not in self.policies:
            raise UnknownPolicy(chosen, self.known)
        return chosen

    def needs_fast_pass(self, name: str | None) -> bool:
        """Whether the policy a request gets decides on the fast tier's analysis; raises
        UnknownPolicy."""
        with self._lock:
            return self.policies[self.check(name)].needs_fast_pass

    def decide(
        self,
        signals: NoteSignals,
        policy: str | None = None,
        load: LoadState | None = None,
        deadline_ms: float | None = None,
    ) -> Decision:
        with self._lock:  # config and policies of one reload together (a reload swaps both)
            name = self.check(policy)
            chosen, costs, limits = self.policies[name], self.config.costs, self.config.load
            models_match = not self._mismatches(self.config, self._running)
        load = load or LoadState()
        blocked: str | None = None
        if not load.llm_available:
            blocked = "llm_tier_unavailable"
        elif load.llm_in_flight >= limits.max_llm_queue or (
            deadline_ms is not None
            and load.llm_p50_ms is not None
            and load.llm_p50_ms * limits.latency_headroom > deadline_ms
        ):
            blocked = "llm_overloaded"
        expected = None if load.llm_p50_ms is None else load.llm_p50_ms * limits.latency_headroom
        ctx = RouteContext(
            signals=signals,
            costs=costs,
            llm_blocked=blocked,
            models_match=models_match,
            deadline_ms=deadline_ms,
            llm_expected_ms=expected,
        )
        decision = chosen.decide(ctx)
        if decision.escalates and blocked is not None:
            decision = Decision(action="fast", reason=blocked)
        self._count(signals, decision)
        return decision

    def _count(self, signals: NoteSignals, d: Decision) -> None:
        n = len(signals.sentences)
        escalated = n if d.action == "note" else len(d.sentences)
        with self._lock:
            c = self._counts
            c.notes += 1
            c.escalated_notes += int(d.escalates)
            c.sentences += n
            c.escalated_sentences += escalated

    def rates(self) -> dict[str, float]:
        """Realized escalation rates since start (exported as metrics, so drift shows)."""
        with self._lock:
            c = self._counts
            return {
                "notes": float(c.notes),
                "note_escalation_rate": c.escalated_notes / c.notes if c.notes else 0.0,
                "sentence_escalation_rate": c.escalated_sentences / c.sentences if c.sentences else 0.0,
            }


__all__ = ["LoadState", "PolicyConfigError", "Router", "UnknownPolicy"]
