"""Tenants: keys from a file and the environment, reload without a restart, per-key token buckets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from serve_app.tenants import RateLimited, Tenants, Unauthorized, load_tenants_file

KEY_A = "ward-3-key-0123456789"
KEY_B = "batch-key-0123456789ab"
BATCH = {"name": "batch", "key": KEY_B, "limit": {"notes_per_s": 1, "burst": 3}}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _write(path: Path, doc: dict, mtime: float) -> Path:
    path.write_text(yaml.safe_dump(doc))
    os.utime(path, (mtime, mtime))  # a reload is keyed on the modification time
    return path


def _doc(*tenants: dict, default: dict | None = None) -> dict:
    out: dict = {"tenants": list(tenants)}
    if default is not None:
        out["default_limit"] = default
    return out


def test_open_without_keys_and_closed_with_them(tmp_path: Path):
    assert Tenants(None, "").tenant_of(None) is None  # the local default: no auth, no limits
    t = Tenants(None, "k1, k2")
    assert t.enabled and t.tenant_of("Bearer k2") == "env-key-2" and t.tenant_of("k1") == "env-key-1"
    for bad in (None, "", "Bearer nope", "k1k2"):
        with pytest.raises(Unauthorized):
            t.tenant_of(bad)


def test_file_tenants_with_their_limits(tmp_path: Path):
    f = _write(
        tmp_path / "tenants.yaml",
        _doc({"name": "ward-3", "key": KEY_A}, BATCH),
        1.0,
    )
    clock = Clock()
    t = Tenants(f, "envkey", clock=clock)
    assert t.tenant_of(f"Bearer {KEY_B}") == "batch" and t.tenant_of(KEY_A) == "ward-3"
    assert t.tenant_of("envkey") == "env-key-1"
    t.spend("batch", 2)
    t.spend("batch", 1)
    with pytest.raises(RateLimited) as err:
        t.spend("batch", 2)
    assert err.value.tenant == "batch" and err.value.retry_after_s == 2  # 2 notes at 1 note/s
    assert "'batch'" in str(err.value) and "1 notes/s, burst 3" in str(err.value)
    t.spend("ward-3", 40)  # the default burst: one caller's spending is not another's
    clock.t += 2.0
    t.spend("batch", 2)  # refilled
    with pytest.raises(RateLimited) as err:
        t.spend("batch", 10)  # more than the burst can ever hold
    assert err.value.retry_after_s == 60


def test_file_is_reloaded_without_a_restart(tmp_path: Path):
    slow = {"name": "a", "key": KEY_A, "limit": {"notes_per_s": 1, "burst": 40}}
    f = _write(tmp_path / "tenants.yaml", _doc(slow), 1.0)
    clock = Clock()
    t = Tenants(f, clock=clock)
    t.spend("a", 30)
    _write(f, _doc(slow, {"name": "b", "key": KEY_B}), 2.0)
    with pytest.raises(Unauthorized):
        t.tenant_of(KEY_B)  # checked every couple of seconds, not on every request
    clock.t += 3.0
    assert t.tenant_of(KEY_B) == "b"
    with pytest.raises(RateLimited):
        t.spend("a", 20)  # an unchanged tenant keeps what it has spent (40 - 30 + 3 refilled = 13)
    _write(f, _doc({"name": "b", "key": KEY_B}), 3.0)
    clock.t += 3.0
    with pytest.raises(Unauthorized):
        t.tenant_of(KEY_A)  # a removed key stops working
    assert t.last_error == "" and "tenants.yaml" in t.source


def test_a_broken_file_keeps_the_running_tenants_and_never_shows_a_key(tmp_path: Path):
    f = _write(tmp_path / "tenants.yaml", _doc({"name": "a", "key": KEY_A}), 1.0)
    clock = Clock()
    t = Tenants(f, clock=clock)
    _write(f, _doc({"name": "a", "key": KEY_A}, {"name": "b", "key": "short-secret"}), 2.0)
    clock.t += 3.0
    assert t.tenant_of(KEY_A) == "a"
    assert "key shorter than 16" in t.last_error and "short-secret" not in t.last_error
    f.write_text("tenants: [")  # not YAML
    os.utime(f, (3.0, 3.0))
    clock.t += 3.0
    assert t.tenant_of(KEY_A) == "a" and t.last_error.endswith("ParserError")


def test_a_missing_file_fails_closed(tmp_path: Path):
    t = Tenants(tmp_path / "absent.yaml", "envkey")
    assert t.enabled and "not found" in t.last_error
    assert t.tenant_of("envkey") == "env-key-1"
    with pytest.raises(Unauthorized):
        t.tenant_of(None)


def test_schema_errors_name_the_field_not_the_key(tmp_path: Path):
    f = _write(tmp_path / "t.yaml", _doc({"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_A}), 1.0)
    with pytest.raises(ValueError, match="unique") as err:
        load_tenants_file(f)
    assert KEY_A not in str(err.value)
    f = _write(tmp_path / "t.yaml", _doc({"name": "a b", "key": KEY_A}), 1.0)
    with pytest.raises(ValueError, match=r"tenants\.0\.name"):
        load_tenants_file(f)
    f = _write(tmp_path / "t.yaml", _doc({"name": "a", "key": KEY_A}, default={"notes_per_s": 0}), 1.0)
    with pytest.raises(ValueError, match=r"default_limit\.notes_per_s"):
        load_tenants_file(f)
