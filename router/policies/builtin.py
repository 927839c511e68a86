"""The policies every build knows: fast-only, llm-only, threshold (over any signal) and budget."""

from __future__ import annotations

import threading
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from router.budget import TokenBucket
from router.policies.base import Decision, Policy, PolicyConfig, RouteContext, check_sentence_signal, register
from router.signals import SIGNALS


class FastOnlyConfig(PolicyConfig):
    kind: Literal["fast-only"] = "fast-only"


@register("fast-only")
class FastOnly(Policy):
    """The fast tier answers everything."""

    Config = FastOnlyConfig

    def decide(self, ctx: RouteContext) -> Decision:
        return Decision(action="fast", reason=f"policy:{self.name}")


class LLMOnlyConfig(PolicyConfig):
    kind: Literal["llm-only"] = "llm-only"


@register("llm-only")
class LLMOnly(Policy):
    """Every note goes to the LLM tier (quality and cost ceiling)."""

    Config = LLMOnlyConfig
    needs_fast_pass = False

    def decide(self, ctx: RouteContext) -> Decision:
        return ctx.escalate([], f"policy:{self.name}", whole_note=True)


class ThresholdConfig(PolicyConfig):
    kind: Literal["threshold"] = "threshold"
    signal: str = Field(description="Signal compared with `threshold` (see router.signals.SIGNALS).")
    threshold: float = Field(description="Escalate sentences on the risky side of this value, in the signal's units.")
    scope: Literal["sentence", "note"] = Field(
        default="sentence",
        description="`sentence`: escalate only the flagged sentences (partial escalation); "
        "`note`: escalate the whole note when any sentence is flagged.",
    )
    ood_threshold: float | None = Field(
        default=None, description="Escalate the whole note when `ood_mahalanobis` is above this (None: off)."
    )
    whole_note_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="When at least this fraction of a note's sentences is flagged, send the whole note.",
    )

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str) -> str:
        return check_sentence_signal(v)


@register("threshold")
class Threshold(Policy):
    """Escalate what is on the risky side of a threshold over one signal; OOD notes go whole."""

    Config = ThresholdConfig

    def decide(self, ctx: RouteContext) -> Decision:
        cfg = self.config
        assert isinstance(cfg, ThresholdConfig)
        ood = ctx.signals.note.get("ood_mahalanobis")
        if cfg.ood_threshold is not None and ood is not None and ood > cfg.ood_threshold:
            return ctx.escalate([], "out_of_distribution", whole_note=True)
        values = ctx.signals.per_sentence.get(cfg.signal)
        if values is None:  # e.g. energy from a model exported without it: nothing to compare
            return Decision(action="fast", reason="signal_unavailable")
        flagged = values > cfg.threshold if SIGNALS[cfg.signal].riskier == "higher" else values < cfg.threshold
        chosen = [int(i) for i in np.flatnonzero(flagged)]
        if not chosen:
            return Decision(action="fast", reason="confident")
        whole = cfg.scope == "note" or len(chosen) >= cfg.whole_note_fraction * len(values)
        return ctx.escalate(chosen, "low_confidence", whole_note=whole)


class BudgetConfig(PolicyConfig):
    kind: Literal["budget"] = "budget"
    inner: str = Field(description="Name of the policy whose escalations this budget pays for.")
    rate_per_minute: float = Field(ge=0, description="Cost units the budget refills per minute.")
    burst: float = Field(gt=0, description="Most cost units the budget holds (one escalation above it never runs).")

    @model_validator(mode="after")
    def _no_self(self) -> BudgetConfig:
        if self.inner in ("", None):
            raise ValueError("inner must name a policy")
        return self


@register("budget")
class Budget(Policy):
    """Follows `inner` while a token bucket of LLM spend allows; otherwise the fast tier answers
    with `budget_exhausted`. The bucket belongs to this policy instance: a hot reload that
    changes the policy starts a full bucket, one that keeps it keeps the level."""

    Config = BudgetConfig

    def __init__(self, name: str, config: PolicyConfig, resolve):  # type: ignore[no-untyped-def]
        super().__init__(name, config, resolve)
        assert isinstance(config, BudgetConfig)
        self.bucket = TokenBucket(config.rate_per_minute, config.burst)
        self._lock = threading.Lock()

    def decide(self, ctx: RouteContext) -> Decision:
        cfg = self.config
        assert isinstance(cfg, BudgetConfig)
        decision = self._resolve(cfg.inner).decide(ctx)
        if not decision.escalates or ctx.llm_blocked:  # nothing will be spent
            return decision
        cost = decision.llm_tokens * ctx.costs.llm_cost_per_token
        if self.bucket.try_spend(cost):
            return decision
        return Decision(action="fast", reason="budget_exhausted")
