"""Callers: who holds which API key, and how many notes each may send (per-key rate limits).

Keys come from a tenants file (a mounted secret; `AppConfig.tenants_file`), re-read when it
changes, without a restart, and/or from the `CLINIE_API_KEYS` environment variable (comma-
separated keys, each a tenant with the default limits). With neither, the service is open (the
local default) and nothing is limited. A tenants file that stops validating keeps the running
tenants (the error is logged without the keys) rather than locking every caller out.

The tenants file (YAML or JSON):

    default_limit: {notes_per_s: 20, burst: 40}     # optional; these are the defaults
    tenants:
      - name: ward-3                               # named in 429 messages and metrics
        key: "a-long-random-string"                # 16 characters at least
      - name: batch-jobs
        key: "another-long-random-string"
        limit: {notes_per_s: 5, burst: 100}

A limit counts notes (a batch of 10 costs 10) in a token bucket per key, in each ingress replica
(with N replicas a key may reach N times its limit). Over it, the request gets 429 with
`error.code = "rate_limited"`, a message that names the tenant and its limit, and `Retry-After`.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from router.budget import TokenBucket

log = logging.getLogger("clinie.tenants")


class RateLimit(BaseModel):
    """Notes per second a key may send, with a burst above it."""

    model_config = ConfigDict(extra="forbid")

    notes_per_s: float = Field(default=20.0, gt=0, description="Sustained notes per second.")
    burst: float = Field(default=40.0, ge=1, description="Notes that may come at once after a quiet spell.")


class Tenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="Shown in 429s.")
    key: SecretStr = Field(description="The API key (Bearer token or X-API-Key), 16 characters at least.")
    limit: RateLimit | None = Field(default=None, description="This key's limit; None: `default_limit`.")

    @model_validator(mode="after")
    def _long_enough(self) -> Tenant:
        if len(self.key.get_secret_value()) < 16:
            raise ValueError(f"tenant {self.name!r}: key shorter than 16 characters")
        return self


class TenantsFile(BaseModel):
    """The tenants file's schema."""

    model_config = ConfigDict(extra="forbid")

    default_limit: RateLimit = Field(default_factory=RateLimit, description="Limit of keys without their own.")
    tenants: list[Tenant] = Field(default_factory=list, description="The keys and who holds them.")

    @model_validator(mode="after")
    def _unique(self) -> TenantsFile:
        names = [t.name for t in self.tenants]
        keys = [t.key.get_secret_value() for t in self.tenants]
        if len(set(names)) != len(names) or len(set(keys)) != len(keys):
            raise ValueError("tenant names and keys must be unique")
        return self


def load_tenants_file(path: Path) -> TenantsFile:
    """The validated file; ValueError naming the file and the field (never a key) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return TenantsFile.model_validate(raw or {})
    except ValidationError as exc:
        where = "; ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors()[:3])
        raise ValueError(f"{path}: {where}") from None
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {type(exc).__name__}") from None


class RateLimited(Exception):
    """A request over its tenant's limit; `retry_after_s` is when the bucket holds it again."""

    def __init__(self, tenant: str, limit: RateLimit, retry_after_s: int):
        super().__init__(
            f"tenant {tenant!r} is over its rate limit ({limit.notes_per_s:g} notes/s, burst {limit.burst:g}); "
            f"retry after {retry_after_s} s"
        )
        self.tenant, self.retry_after_s = tenant, retry_after_s


class Unauthorized(Exception):
    """No key, or a key no tenant holds."""


class Tenants:
    """Authentication and per-key rate limits for one ingress replica."""

    def __init__(
        self,
        file: Path | None,
        env_keys: str = "",
        reload_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.file, self._env_keys, self._interval, self._clock = file, env_keys, reload_interval_s, clock
        self._lock = threading.Lock()
        self._checked_at = -math.inf
        self._mtime: float | None = None
        self._by_key: dict[bytes, tuple[str, RateLimit]] = {}
        self._limits: dict[str, RateLimit] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._loaded = False
        self.source = "none"
        self.last_error = ""
        self._reload(force=True)

    @property
    def enabled(self) -> bool:
        """Whether callers must present a key (some tenant is configured, or a file is expected)."""
        return bool(self._by_key) or self.file is not None

    def _from_env(self, default: RateLimit) -> dict[bytes, tuple[str, RateLimit]]:
        keys = [k.strip() for k in self._env_keys.split(",") if k.strip()]
        return {k.encode(): (f"env-key-{i + 1}", default) for i, k in enumerate(keys)}

    def _read(self) -> TenantsFile:
        if self.file is None:
            return TenantsFile()
        if self._mtime is None:
            raise ValueError(f"{self.file}: not found")
        return load_tenants_file(self.file)

    def _reload(self, force: bool = False) -> None:
        """Re-read the file when its modification time changed (checked every few seconds)."""
        now = self._clock()
        if not force and now - self._checked_at < self._interval:
            return
        self._checked_at = now
        try:
            mtime: float | None = self.file.stat().st_mtime if self.file is not None else None
        except OSError:
            mtime = None
        if not force and mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            parsed = self._read()
            self.last_error = ""
        except ValueError as exc:
            self.last_error = str(exc)
            log.error("tenants file refused (running tenants kept): %s", exc)
            if self._loaded:
                return
            parsed = TenantsFile()  # fail closed: with a file expected, only the environment's keys get in
        self._install(parsed)

    def _install(self, parsed: TenantsFile) -> None:
        by_key = self._from_env(parsed.default_limit)
        for t in parsed.tenants:
            by_key[t.key.get_secret_value().encode()] = (t.name, t.limit or parsed.default_limit)
        limits = {name: lim for name, lim in by_key.values()}
        with self._lock:
            self._by_key, self._loaded = by_key, True
            # a tenant keeps its bucket (what it has spent) across a reload unless its limit changed
            self._buckets = {n: b for n, b in self._buckets.items() if limits.get(n) == self._limits.get(n)}
            self._limits = limits
        self.source = ", ".join(s for s in (str(self.file) if self.file else "", "env" if self._env_keys else "") if s)
        log.info("tenants loaded: %d keys", len(by_key))

    def tenant_of(self, presented: str | None) -> str | None:
        """The tenant holding the presented key (`Bearer KEY` or KEY); None when auth is off.
        Raises Unauthorized. Compared in constant time against every key."""
        self._reload()
        with self._lock:
            by_key = self._by_key
        if not by_key and self.file is None:
            return None
        given = (presented or "").removeprefix("Bearer ").strip().encode()
        found = None
        for key, (name, _) in by_key.items():
            if hmac.compare_digest(given, key):
                found = name
        if found is None:
            raise Unauthorized("missing or invalid API key")
        return found

    def spend(self, tenant: str | None, notes: int) -> None:
        """Take `notes` from the tenant's bucket, or raise RateLimited (None: no limits)."""
        if tenant is None:
            return
        with self._lock:
            limit = self._limits.get(tenant)
            if limit is None:
                return
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = TokenBucket(limit.notes_per_s * 60, limit.burst, self._clock)
        if not bucket.try_spend(notes):
            short = notes - bucket.level
            retry = max(1, math.ceil(short / limit.notes_per_s)) if notes <= limit.burst else 60
            raise RateLimited(tenant, limit, retry)
