"""The `gain` policy: escalate a sentence only where the deployed LLM tier was measured to do
better than the fast tier, by enough to be worth its cost, and in time.

`clinie calibrate --llm-pred` fits the table (`router.calibrate.fit_gain_table`): the sentences of
a labelled set are cut into quantile buckets of one signal, and each bucket holds the mean *gain*
of taking the LLM tier's answer over the fast tier's for a sentence of that bucket.

Gain unit: the change of corpus F1 (0..1, the mean over `metrics`) per unit share of sentences
escalated. Escalating a fraction `r` of the traffic's sentences whose mean gain is `g` moves F1 by
about `r * g`; so `g` does not depend on how many notes the table was fitted on. Cost of a
sentence: its estimated LLM tokens (`CostModel.llm_tokens`) times `llm_cost_per_token`.

A sentence is escalated when its bucket's conservative gain (`gain - margin_se * se`) is positive
and above `min_gain_per_cost` times its cost: the price is the least F1 an escalation must add per
cost unit it spends per sentence of traffic. Reasons when it does not escalate, in order of
precedence: `uncalibrated` (empty table), `uncalibrated_models` (the running tiers are not the
ones `calibrated_for` names: a gain measured on other models says nothing about these),
`signal_unavailable`, `llm_not_better` (no bucket gains at all), `confident` (this note's
sentences fall in buckets that do not gain), `below_price` (they gain, but less than the price),
`deadline` (the LLM tier's recent latency does not fit the time left).
"""

from __future__ import annotations

import bisect
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from router.policies.base import Decision, Policy, PolicyConfig, RouteContext, check_sentence_signal, register

# The F1s a gain can be measured in (`router.simulate.F1_KEYS`; repeated here because the
# simulation imports the policies).
METRICS = tuple(f"{m}_{g}" for m in ("strict", "relaxed") for g in ("entities", "modifiers", "relations"))


class GainBucket(BaseModel):
    """One bucket of the gain table: sentences whose signal value lies below `upper` (and at or
    above the previous bucket's `upper`)."""

    model_config = ConfigDict(extra="forbid")

    upper: float | None = Field(description="Exclusive upper bound of the signal value; null for the last bucket.")
    gain: float = Field(description="Mean gain of the LLM tier's answer over the fast tier's (see module doc).")
    se: float = Field(default=0.0, ge=0, description="Standard error of `gain` on the calibration set.")
    sentences: int = Field(default=0, ge=0, description="Calibration sentences in the bucket.")

    @field_validator("upper", "gain", "se")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class GainConfig(PolicyConfig):
    kind: Literal["gain"] = "gain"
    signal: str = Field(description="Sentence signal the buckets are cut on (see router.signals.SIGNALS).")
    min_gain_per_cost: float = Field(
        default=0.0,
        ge=0,
        description="Price: least gain per cost unit (of one sentence) an escalation must bring; 0 = any gain.",
    )
    margin_se: float = Field(
        default=1.0, ge=0, description="Act on the bucket's gain minus this many standard errors (0: the mean)."
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["relaxed_entities", "relaxed_modifiers", "relaxed_relations"],
        min_length=1,
        description="F1s whose mean the gain measures (recorded by calibration).",
    )
    whole_note_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="When at least this fraction of a note's sentences is chosen, send the whole note.",
    )
    buckets: list[GainBucket] = Field(
        default_factory=list,
        description="The gain table, by ascending `upper`, the last unbounded; empty = not calibrated.",
    )

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str) -> str:
        return check_sentence_signal(v)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in METRICS]
        if bad:
            raise ValueError(f"unknown F1 {bad[0]!r}; known: {', '.join(METRICS)}")
        return v

    @field_validator("buckets")
    @classmethod
    def _table_shape(cls, v: list[GainBucket]) -> list[GainBucket]:
        if not v:
            return v
        uppers = [b.upper for b in v]
        if uppers[-1] is not None or any(u is None for u in uppers[:-1]):
            raise ValueError("every bucket but the last needs an `upper`; the last has none (null)")
        bounded = [u for u in uppers[:-1] if u is not None]
        if any(b >= a for a, b in zip(bounded[1:], bounded, strict=False)):
            raise ValueError("`upper` must increase strictly from one bucket to the next")
        return v

    def conservative(self) -> list[float]:
        """Per bucket, the gain the policy acts on."""
        return [b.gain - self.margin_se * b.se for b in self.buckets]


@register("gain")
class Gain(Policy):
    """Escalate the sentences whose expected gain per cost beats the price, in time (module doc)."""

    Config = GainConfig

    def __init__(self, name: str, config: PolicyConfig, resolve):  # type: ignore[no-untyped-def]
        super().__init__(name, config, resolve)
        assert isinstance(config, GainConfig)
        self._uppers = [b.upper for b in config.buckets[:-1] if b.upper is not None]
        self._gains = config.conservative()

    def bucket_gain(self, value: float) -> float:
        """The gain the policy acts on for a sentence with this signal value."""
        return self._gains[bisect.bisect_right(self._uppers, value)]

    def decide(self, ctx: RouteContext) -> Decision:
        cfg = self.config
        assert isinstance(cfg, GainConfig)
        if not self._gains:
            return Decision(action="fast", reason="uncalibrated")
        if not ctx.models_match:
            return Decision(action="fast", reason="uncalibrated_models")
        values = ctx.signals.per_sentence.get(cfg.signal)
        if values is None:
            return Decision(action="fast", reason="signal_unavailable")
        if max(self._gains) <= 0:
            return Decision(action="fast", reason="llm_not_better")
        chars = ctx.signals.sentence_chars
        chosen, gaining = [], False
        for i, v in enumerate(values):
            g = self.bucket_gain(float(v))
            if g <= 0:
                continue
            gaining = True
            cost = ctx.costs.llm_tokens([chars[i]]) * ctx.costs.llm_cost_per_token
            if g > cfg.min_gain_per_cost * cost:
                chosen.append(i)
        if not chosen:
            return Decision(action="fast", reason="below_price" if gaining else "confident")
        if ctx.deadline_ms is not None and ctx.llm_expected_ms is not None and ctx.llm_expected_ms > ctx.deadline_ms:
            return Decision(action="fast", reason="deadline")
        whole = len(chosen) >= cfg.whole_note_fraction * len(values)
        return ctx.escalate(chosen, "expected_gain", whole_note=whole)
