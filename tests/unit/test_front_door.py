"""The front door's Ray settings, and the combinations refused before any Ray starts."""

from __future__ import annotations

import pytest

from serve_app import front_door
from serve_app.cli import main
from serve_app.front_door import HAPROXY_ENV, FrontDoor


def test_haproxy_sets_rays_settings_and_proxy_sets_none():
    assert front_door.ray_env(FrontDoor.PROXY) == {}
    assert front_door.active({}) is FrontDoor.PROXY
    env = front_door.ray_env(FrontDoor.HAPROXY)
    assert env == HAPROXY_ENV and env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert front_door.active(env) is FrontDoor.HAPROXY
    env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    assert HAPROXY_ENV["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # a copy: the table itself stays


def test_local_start_refuses_tls_with_haproxy_before_starting_ray():
    import ray

    from serve_app import local

    cfg, raw = local.local_app_config(llm_enabled=False)
    with pytest.raises(ValueError, match="TLS"):
        local.start(cfg, raw, tls=("cert.pem", "key.pem"), door=FrontDoor.HAPROXY)
    assert not ray.is_initialized()


def test_local_start_refuses_a_front_door_its_environment_contradicts(monkeypatch: pytest.MonkeyPatch):
    import ray

    from serve_app import local, proxy_retry

    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")  # the operator's, say
    monkeypatch.setenv(proxy_retry.ENV, proxy_retry.CALLBACK)  # restored after the test
    cfg, raw = local.local_app_config(llm_enabled=False)
    with pytest.raises(ValueError, match="proxy front door was asked for"):
        local.start(cfg, raw, door=FrontDoor.PROXY)
    assert not ray.is_initialized()


def test_cli_refuses_tls_with_haproxy(tmp_path, capsys: pytest.CaptureFixture[str]):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    code = main(["serve", "--front-door", "haproxy", "--tls-cert", str(cert), "--tls-key", str(cert)])
    assert code == 2 and "proxy front door" in capsys.readouterr().err


def test_cli_refuses_bad_tls_arguments_before_building_any_model(tmp_path, monkeypatch, capsys):
    from serve_app import local

    def no_models(cfg):
        raise AssertionError("models prepared before the usage error")

    monkeypatch.setattr(local, "prepare_models", no_models)
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    assert main(["serve", "--tls-cert", str(cert)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert main(["serve", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.pem")]) == 2
    assert "TLS file not found" in capsys.readouterr().err
