"""serve_app/worker_priority.py: Ray's workers start at nice 0 where clinie starts Ray, unless the
operator chose otherwise."""

from __future__ import annotations

from serve_app import worker_priority


def test_workers_start_at_nice_0_unless_the_operator_set_a_value() -> None:
    env: dict[str, str] = {}
    worker_priority.install_env(env)
    assert env == {"RAY_worker_niceness": "0"}
    env["RAY_worker_niceness"] = "5"
    worker_priority.install_env(env)
    assert env["RAY_worker_niceness"] == "5"  # the operator's own value is kept
