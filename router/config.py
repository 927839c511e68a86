"""The router's configuration: named policies, the default, load limits, the cost model, and the
models the file's gains were measured on.

Policy files are YAML or JSON with this shape (what `clinie calibrate` writes)::

    default_policy: default
    costs: {llm_cost_per_token: 1.0}
    load: {max_llm_queue: 8}
    calibrated_for:                   # required when a `gain` policy has a table
      fast: clinie-fast@a9bed267db    # the fast tier's model_tag (NAME@VERSION[+PRECISION])
      llm: smollm2-135m-instruct-v2   # the LLM tier's model id (NAME[+lora:ADAPTER]), LLMTierConfig.model_id
    policies:
      calibrated: {kind: threshold, signal: min_token_prob, threshold: 0.62}
      gain:
        kind: gain
        signal: min_token_prob
        min_gain_per_cost: 0.0        # price: least gain per cost unit of a sentence (0: any gain)
        margin_se: 1.0                # act on gain minus 1 standard error
        metrics: [relaxed_entities, relaxed_modifiers, relaxed_relations]
        buckets:                      # ascending `upper` of the signal; the last has `upper: null`
          - {upper: 0.31, gain: -0.42, se: 0.05, sentences: 105}
          - {upper: null, gain: -0.11, se: 0.02, sentences: 944}
      default: {kind: budget, inner: gain, rate_per_minute: 200000, burst: 50000}

Kinds: `threshold` and `budget` (`router.policies.builtin`), `gain` (`router.policies.gain`, whose
docstring defines gain, cost and price), and any kind registered with `@register`. `fast-only` and
`llm-only` always exist and cannot be redefined. A file that fails validation is refused with a
message naming the field (`policies.default.threshold: ...`, `calibrated_for.llm: ...`).

`calibrated_for` names the models the `gain` tables were measured on. The host tells the router
which models are running (`Router.set_running_models`); while they differ from these (or are not
reported), `gain` policies do not escalate (`route.reason = "uncalibrated_models"`) and
`Router.model_check()` lists the mismatches. Threshold policies do not depend on it: their
thresholds are quantiles of a fast-tier signal and say nothing about the LLM tier.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.policies import REGISTRY, CostModel, PolicyConfig

BUILTIN: dict[str, dict[str, Any]] = {"fast-only": {"kind": "fast-only"}, "llm-only": {"kind": "llm-only"}}


class PolicyConfigError(ValueError):
    """A router configuration that cannot be used; the message names the offending field."""


class LoadLimits(BaseModel):
    """When the LLM tier counts as overloaded (the router then answers from the fast tier)."""

    model_config = ConfigDict(extra="forbid")

    max_llm_queue: int = Field(
        default=8,
        ge=0,
        description="LLM-tier requests in flight (queued or running) at or above which it is overloaded.",
    )
    latency_headroom: float = Field(
        default=1.0,
        gt=0,
        description="Overloaded when the LLM tier's recent p50 latency times this exceeds the request's deadline.",
    )


# Model ids as results name them: the fast tier's `NAME@VERSION` (+ `+fp32` when not int8), the LLM
# tier's served name or model folder name (hub ids may keep their `org/`), + `+lora:ADAPTER`,
# + `+free` under free decoding.
FAST_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9]+(\+[a-z0-9]+)?")
LLM_MODEL_ID = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?(\+lora:[A-Za-z0-9][A-Za-z0-9._-]*)?(\+free)?"
)


class CalibratedFor(BaseModel):
    """The pair of models a configuration's gain tables were measured on."""

    model_config = ConfigDict(extra="forbid")

    fast: str = Field(description="Fast-tier model id (`model_tag`, e.g. clinie-fast@a9bed267db).")
    llm: str = Field(description="LLM-tier model id (`LLMTierConfig.model_id`, e.g. smollm2-135m-instruct-v2).")
    data: str = Field(default="", max_length=500, description="What the gains were measured on (free text).")

    @field_validator("fast")
    @classmethod
    def _fast_shape(cls, v: str) -> str:
        if len(v) > 200 or not FAST_MODEL_ID.fullmatch(v):
            raise ValueError(f"{v[:80]!r} is not a fast-tier model id (NAME@VERSION, e.g. clinie-fast@a9bed267db)")
        return v

    @field_validator("llm")
    @classmethod
    def _llm_shape(cls, v: str) -> str:
        if len(v) > 200 or not LLM_MODEL_ID.fullmatch(v):
            raise ValueError(
                f"{v[:80]!r} is not an LLM model id (NAME or NAME+lora:ADAPTER, e.g. smollm2-135m-instruct-v2)"
            )
        return v


class RouterConfig(BaseModel):
    """Everything the router needs; hot-reloadable as one unit."""

    model_config = ConfigDict(extra="forbid")

    default_policy: str = Field(default="default", description="Policy of requests that name none.")
    policies: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Policy name -> config (`kind` plus that kind's fields)."
    )
    costs: CostModel = Field(default_factory=CostModel, description="Cost model for budgets and reports.")
    load: LoadLimits = Field(default_factory=LoadLimits, description="LLM-tier overload limits.")
    calibrated_for: CalibratedFor | None = Field(
        default=None, description="Models the gain tables were measured on (required with a gain table)."
    )

    @model_validator(mode="after")
    def _check(self) -> RouterConfig:
        for name in BUILTIN:
            if name in self.policies and self.policies[name] != BUILTIN[name]:
                raise ValueError(f"policies.{name}: built-in policy cannot be redefined")
        merged = {**self.policies, **BUILTIN}
        if self.default_policy not in merged:
            raise ValueError(f"default_policy: {self.default_policy!r} is not a configured policy")
        # validate every policy first, so that following an `inner` chain below never meets an
        # unvalidated spec (an unknown kind there raised KeyError instead of naming the field)
        validated: dict[str, PolicyConfig] = {}
        for name, spec in merged.items():
            kind = spec.get("kind") if isinstance(spec, dict) else None
            if not isinstance(kind, str) or kind not in REGISTRY:  # unhashable kinds raised TypeError
                raise ValueError(f"policies.{name}.kind: unknown kind {kind!r}; known: {', '.join(sorted(REGISTRY))}")
            try:
                validated[name] = REGISTRY[kind].Config.model_validate(spec)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                raise ValueError(f"policies.{name}{'.' + where if where else ''}: {msg}") from None
        for name, cfg in validated.items():
            if self.calibrated_for is None and getattr(cfg, "buckets", None):
                raise ValueError(
                    f"calibrated_for: required by policy {name!r}, whose gains were measured on some models "
                    "(name them: fast, llm)"
                )
        for name, cfg in validated.items():
            seen = {name}
            while (inner := getattr(cfg, "inner", None)) is not None:
                if inner not in validated:
                    raise ValueError(f"policies.{name}.inner: {inner!r} is not a configured policy")
                if inner in seen:
                    raise ValueError(f"policies.{name}.inner: policies wrap each other in a cycle")
                seen.add(inner)
                cfg = validated[inner]
        return self

    def all_policies(self) -> dict[str, PolicyConfig]:
        merged = {**self.policies, **BUILTIN}
        return {n: REGISTRY[s["kind"]].Config.model_validate(s) for n, s in merged.items()}


def parse_router_config(raw: dict[str, Any]) -> RouterConfig:
    """Validate a config mapping; PolicyConfigError names the field."""
    try:
        return RouterConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise PolicyConfigError(f"{where}: {msg}" if where else msg) from None


def load_router_config(path: Path) -> RouterConfig:
    """Read a policy file (YAML or JSON)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyConfigError(f"cannot read policy file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyConfigError(f"policy file {path} is not UTF-8 text") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PolicyConfigError(f"policy file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(raw, dict):
        raise PolicyConfigError(f"policy file {path} must hold a mapping")
    return parse_router_config(raw)


def fallback_config() -> RouterConfig:
    """Used when no policy file is given: nothing was measured, so `default` (a budget over a `gain`
    policy with an empty table) escalates nothing and says so (`route.reason = "uncalibrated"`);
    `confidence` escalates sentences whose least certain word-piece is below 0.5 (an uncalibrated
    guess, by name only). Run `clinie calibrate --llm-pred` for a measured default."""
    return RouterConfig(
        policies={
            "confidence": {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5},
            "gain": {"kind": "gain", "signal": "min_token_prob", "buckets": []},
            "default": {"kind": "budget", "inner": "gain", "rate_per_minute": 600_000, "burst": 100_000},
        }
    )
