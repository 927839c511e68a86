"""Configuration of the served application: the `args` of `serve_app.app:build_app`.

The same model is filled by `clinie serve` (local, embedded default models) and by the `args:`
of a `serve deploy` YAML (production). Per-deployment scaling lives in the YAML's `deployments:`
section (validated by `serve_app.deploy_config`), or, for `clinie serve`, in `deployment_options`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.llm_tier.config import LLMTierConfig


class Limits(BaseModel):
    """Input limits: oversized input gets a 413 (gRPC: INVALID_ARGUMENT), never a crash."""

    model_config = ConfigDict(extra="forbid")

    max_note_chars: int = Field(default=200_000, ge=1, description="Longest note accepted, in characters.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Largest HTTP request body.")
    max_batch_notes: int = Field(default=64, ge=1, description="Most notes in one batch request.")


class Admission(BaseModel):
    """Load shedding at the ingress: refuse early (429 + Retry-After) instead of queueing."""

    model_config = ConfigDict(extra="forbid")

    max_queue_wait_ms: float = Field(
        default=700.0,
        gt=0,
        description="Refuse a note when the notes already waiting for the fast tier at this replica would take "
        "longer than this to clear at the recently measured rate, so overload answers within about a second.",
    )
    max_in_flight: int = Field(default=64, ge=1, description="Hard cap on notes in flight at one ingress replica.")
    retry_after_s: int = Field(default=1, ge=1, description="`Retry-After` seconds sent with 429/503.")


class AppConfig(BaseModel):
    """Everything `build_app` needs."""

    model_config = ConfigDict(extra="forbid")

    fast_tier_model: str | None = Field(
        default=None,
        description="Fast-tier model directory (relative: to the repo root); None: $CLINIE_MODEL_DIR or the "
        "embedded default (built if needed).",
    )
    fast_tier_precision: Literal["int8", "fp32"] = Field(default="int8", description="Fast-tier ONNX variant.")
    fast_tier_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per fast-tier replica; 0: one per core of the node."
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
    admission: Admission = Field(default_factory=Admission, description="Load shedding.")
    api_keys_env: str = Field(
        default="CLINIE_API_KEYS",
        description="Environment variable holding comma-separated API keys; unset or empty: no auth (localhost).",
    )
    default_deadline_ms: float | None = Field(
        default=None, gt=0, description="Deadline of a request that carries none (None: the LLM tier's own timeout)."
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
