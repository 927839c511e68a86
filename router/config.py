"""The router's configuration: named policies, the default, load limits and the cost model.

Policy files are YAML or JSON with this shape (what `clinie calibrate` writes)::

    default_policy: default
    costs: {llm_cost_per_token: 1.0}
    load: {max_llm_queue: 8}
    policies:
      calibrated: {kind: threshold, signal: min_token_prob, threshold: 0.62}
      default: {kind: budget, inner: calibrated, rate_per_minute: 200000, burst: 50000}

`fast-only` and `llm-only` always exist and cannot be redefined. A file that fails validation is
refused with a message naming the field (`policies.default.threshold: ...`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class RouterConfig(BaseModel):
    """Everything the router needs; hot-reloadable as one unit."""

    model_config = ConfigDict(extra="forbid")

    default_policy: str = Field(default="default", description="Policy of requests that name none.")
    policies: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Policy name -> config (`kind` plus that kind's fields)."
    )
    costs: CostModel = Field(default_factory=CostModel, description="Cost model for budgets and reports.")
    load: LoadLimits = Field(default_factory=LoadLimits, description="LLM-tier overload limits.")

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
    """Used when no calibrated policy file exists: `default` escalates sentences whose least
    certain word-piece is below 0.5 (an uncalibrated guess; run `clinie calibrate`)."""
    return RouterConfig(
        policies={
            "confidence": {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5},
            "default": {"kind": "budget", "inner": "confidence", "rate_per_minute": 600_000, "burst": 100_000},
        }
    )
