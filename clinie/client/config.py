"""Client settings (a pydantic model, validated once) and the wait before a retry."""

from __future__ import annotations

import random
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

Scheme = Literal["http", "https", "grpc", "grpcs"]
DEFAULT_PORTS: dict[str, int] = {"http": 8000, "https": 443, "grpc": 9000, "grpcs": 443}


class ClientConfig(BaseModel):
    """How a Client reaches the service and how patiently it retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        description="`http://host:port`, `https://host[:port]`, `grpc://host:port` or `grpcs://host[:port]` "
        "(gRPC over TLS). No port: 8000 for http, 9000 for grpc, 443 for the TLS schemes."
    )
    api_key: str | None = Field(default=None, description="Sent as `Authorization: Bearer KEY` (HTTP and gRPC).")
    timeout: float = Field(default=30.0, gt=0, le=3600, description="Seconds one attempt may take.")
    retries: int = Field(default=3, ge=0, le=20, description="Most re-sends after a 429 or 503 (0: none).")
    max_retry_wait: float = Field(
        default=30.0, gt=0, le=600, description="Longest wait before a retry, whatever `Retry-After` says."
    )
    backoff: float = Field(
        default=0.5, gt=0, le=60, description="First wait when the refusal carries no `Retry-After`; doubles."
    )
    max_connections: int = Field(
        default=100, ge=1, le=100_000, description="HTTP connections kept open at most (concurrent calls beyond wait)."
    )
    batch_size: int = Field(
        default=64, ge=1, le=10_000, description="Notes per batch request (the service's default limit is 64)."
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of the certificate authority to trust for https/grpcs (a private CA or a "
        "self-signed certificate); None: the system's trust store.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"url must start with http://, https://, grpc:// or grpcs://, not {value!r}")
        if not parts.hostname:
            raise ValueError(f"url {value!r} has no host")
        if parts.scheme.startswith("grpc") and parts.path not in ("", "/"):
            raise ValueError(f"a gRPC url is host:port only, not {value!r}")
        try:
            parts.port  # noqa: B018 -- raises on a bad port
        except ValueError as exc:
            raise ValueError(f"url {value!r}: {exc}") from None
        return value.rstrip("/")

    @property
    def scheme(self) -> Scheme:
        return urlsplit(self.url).scheme  # type: ignore[return-value]

    @property
    def target(self) -> str:
        """`host:port` for gRPC channels."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{parts.port or DEFAULT_PORTS[parts.scheme]}"

    @property
    def base_url(self) -> str:
        """The HTTP base URL, with the default port made explicit when none was given."""
        parts = urlsplit(self.url)
        if parts.port is None and parts.scheme == "http":
            return f"http://{self.target}{parts.path}"
        return self.url


def retry_wait(cfg: ClientConfig, attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Seconds to wait before re-sending after the `attempt`-th refusal (1-based).

    The service's `Retry-After` (whole seconds) is the least wait, plus up to a quarter more at
    random: clients refused in the same second would otherwise all come back in the same second.
    Without one (a 503 from Ray's proxy when a deployment queue is full, or the service
    unreachable), exponential backoff from `backoff`, jittered over its upper half. Every wait is
    capped at `max_retry_wait`.
    """
    r = rng or random
    if retry_after is not None:
        return min(retry_after * r.uniform(1.0, 1.25), cfg.max_retry_wait)
    ceiling = min(cfg.backoff * 2 ** (attempt - 1), cfg.max_retry_wait)
    return r.uniform(ceiling / 2, ceiling)
