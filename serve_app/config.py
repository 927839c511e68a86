"""Configuration of the served application: the `args` of `serve_app.app:build_app`.

The same model is filled by `clinie serve` (local, embedded default models) and by the `args:`
of a `serve deploy` YAML (production). Per-deployment scaling lives in the YAML's `deployments:`
section (validated by `serve_app.deploy_config`), or, for `clinie serve`, in `deployment_options`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.fast_tier.config import SpanFloor
from deployments.llm_tier.config import LLMTierConfig
from serve_app.admission import AdmissionConfig

# Largest `deadline_ms` a request may carry: 5 minutes, below the proxies' request_timeout_s
# (serve configs: 310 s), so the service's own answer (a result, or 504) always comes first.
MAX_DEADLINE_MS = 300_000.0


class Limits(BaseModel):
    """Input limits: oversized input gets a 413 (gRPC: INVALID_ARGUMENT), never a crash."""

    model_config = ConfigDict(extra="forbid")

    max_note_chars: int = Field(default=200_000, ge=1, description="Longest note accepted, in characters.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Largest HTTP request body.")
    max_batch_notes: int = Field(default=64, ge=1, description="Most notes in one batch request.")


class AppConfig(BaseModel):
    """Everything `build_app` needs."""

    model_config = ConfigDict(extra="forbid")

    fast_tier_model: str | None = Field(
        default=None,
        description="Fast-tier model directory (relative: to the repo root); None: $CLINIE_MODEL_DIR or the "
        "embedded default (built if needed).",
    )
    fast_tier_precision: Literal["int8", "fp32"] = Field(default="int8", description="Fast-tier ONNX variant.")
    fast_tier_span_floor: SpanFloor = Field(
        default_factory=SpanFloor,
        description="Calibrated confidence below which the fast tier does not report a span (deployments/fast_tier/"
        "config.py SpanFloor: entity, modifier; 0 reports every decoded span).",
    )
    fast_tier_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per fast-tier replica; 0: one per core of the node."
    )
    model_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="Raise the nice value of each model replica (FastTier, LLMTier) by this much (19 at most): where "
        "they share cores with Ray's proxy and the Ingress (one small node), requests and refusals then get a core "
        "first. Ray starts its workers at nice 15 unless told otherwise; `clinie serve` starts them at 0 "
        "(serve_app/worker_priority.py), so 19 puts the models at 19 under a request path at 0. 0 where the tiers "
        "have cores of their own.",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime providers for the fast tier (GPU nodes: CUDAExecutionProvider first).",
    )
    policies_file: str | None = Field(
        default=None, description="Router policy file; None: $CLINIE_POLICIES or the checked-in default."
    )
    llm_enabled: bool = Field(default=True, description="Deploy the LLM tier (off: escalations answer fast-only).")
    llm_config: str | None = Field(
        default=None,
        description="YAML file of LLMTierConfig (relative: to the repo root); wins over `llm`. None: use `llm`.",
    )
    llm: LLMTierConfig = Field(default_factory=LLMTierConfig, description="LLM tier configuration (inline).")
    limits: Limits = Field(default_factory=Limits, description="Input limits.")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Deadline-aware admission (serve_app/admission.py)."
    )
    api_keys_env: str = Field(
        default="CLINIE_API_KEYS",
        description="Environment variable holding comma-separated API keys (each a tenant with the default rate "
        "limit); unset or empty, and no `tenants_file`: no auth (localhost).",
    )
    tenants_file: str | None = Field(
        default=None,
        description="Tenants file (YAML/JSON: names, keys, per-key rate limits; serve_app/tenants.py), e.g. a "
        "mounted secret; re-read when it changes. Relative: to the repo root. None: keys from `api_keys_env` only.",
    )
    default_deadline_ms: float = Field(
        default=30_000.0,
        gt=0,
        le=MAX_DEADLINE_MS,
        description="Deadline of a request that carries no `deadline_ms`: 30 s suits a synchronous call (a "
        "fast-tier answer takes well under a second; an escalation to a GPU LLM tier a few seconds).",
    )
    fast_max_batch_size: int = Field(
        default=8, ge=1, le=64, description="Notes per @serve.batch call of the fast tier."
    )
    fast_batch_wait_timeout_s: float = Field(default=0.005, ge=0, description="How long a batch waits to fill.")
    deployment_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Ray Serve options per deployment name (Ingress, FastTier, Router, LLMTier), as in a serve "
        "config's `deployments:` entries; used by `clinie serve`.",
    )
