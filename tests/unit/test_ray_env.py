"""serve_app/ray_env.py: the Ray settings each kind of start gets, and an operator's own values
kept."""

from __future__ import annotations

import pytest

from serve_app import ray_env
from serve_app.front_door import HAPROXY_ENV, FrontDoor, active

HOOK = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.proxy_retry:middlewares"}
WORKERS_AT_0 = {"RAY_worker_niceness": "0"}
LIGHT_UPKEEP = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_LOG_TO_STDERR": "0"}


@pytest.mark.parametrize(
    ("where", "door", "expected"),
    [
        ("local", FrontDoor.PROXY, HOOK | WORKERS_AT_0 | LIGHT_UPKEEP),
        ("local", FrontDoor.HAPROXY, HOOK | WORKERS_AT_0 | LIGHT_UPKEEP | HAPROXY_ENV),
        # the multi-node cluster keeps Ray's upkeep and its proxy front door
        ("cluster", FrontDoor.PROXY, HOOK | WORKERS_AT_0),
    ],
)
def test_each_start_gets_its_settings(where: ray_env.Where, door: FrontDoor, expected: dict[str, str]) -> None:
    env: dict[str, str] = {"PATH": "/bin"}
    ray_env.install(where, door, env)
    assert env == {"PATH": "/bin", **expected}
    assert active(env) is door


def test_an_operators_own_values_are_kept() -> None:
    mine = {
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "ops.own:callback",
        "RAY_worker_niceness": "5",
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1",
        "RAY_SERVE_LOG_TO_STDERR": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "30",
    }
    env = dict(mine)
    ray_env.install("local", FrontDoor.HAPROXY, env)
    assert env == mine | {"RAY_SERVE_ENABLE_HA_PROXY": "1"}  # only what the operator left unset


def test_it_sets_this_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    env: dict[str, str] = {}
    monkeypatch.setattr(os, "environ", env)  # stands in for the process's, restored after the test
    ray_env.install("cluster")
    assert env == HOOK | WORKERS_AT_0
