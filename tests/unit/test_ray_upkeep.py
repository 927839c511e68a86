"""serve_app/ray_upkeep.py: whether Serve's replicas log to stderr, read as Ray reads it."""

from __future__ import annotations

from serve_app import ray_upkeep


def test_stderr_logging_is_on_only_for_what_ray_reads_as_on() -> None:
    assert ray_upkeep.logs_to_stderr({})  # Ray's default
    assert ray_upkeep.logs_to_stderr({"RAY_SERVE_LOG_TO_STDERR": "1"})
    for off in ("0", "true", "yes", ""):  # Ray's get_env_bool: exactly "1" is on
        assert not ray_upkeep.logs_to_stderr({"RAY_SERVE_LOG_TO_STDERR": off})
    assert not ray_upkeep.logs_to_stderr(dict(ray_upkeep.RAY_ENV))  # what `clinie serve` installs
