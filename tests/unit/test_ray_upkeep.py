"""serve_app/ray_upkeep.py: where clinie starts Ray, the Serve controller loops every 0.5 s and
Serve logs to its files only, unless the operator chose otherwise."""

from __future__ import annotations

from serve_app import ray_upkeep


def test_lighter_upkeep_unless_the_operator_set_a_value() -> None:
    env: dict[str, str] = {}
    ray_upkeep.install_env(env)
    assert env == {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_LOG_TO_STDERR": "0"}
    assert not ray_upkeep.logs_to_stderr(env)
    mine = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1", "RAY_SERVE_LOG_TO_STDERR": "1"}
    env = dict(mine)
    ray_upkeep.install_env(env)
    assert env == mine  # the operator's own values are kept
    assert ray_upkeep.logs_to_stderr(env)


def test_stderr_logging_is_on_only_for_what_ray_reads_as_on() -> None:
    assert ray_upkeep.logs_to_stderr({})  # Ray's default
    for off in ("0", "true", "yes", ""):  # Ray's get_env_bool: exactly "1" is on
        assert not ray_upkeep.logs_to_stderr({"RAY_SERVE_LOG_TO_STDERR": off})
