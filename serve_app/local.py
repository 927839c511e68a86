"""Start the application on a local Ray: what `clinie serve`, the integration tests and the load
benchmark run.

Why the numbers: a Ray Serve LLM/vLLM replica holds its CPUs for as long as it lives, and on a
2-core machine Ray's default of 2 logical CPUs leaves nothing for the fast tier (measured: a
second replica waits forever). So the local Ray declares at least 4 logical CPUs, and the local
serve config gives the deployments fractional `num_cpus` that sum below that.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.config import AppConfig

LOCAL_CONFIG = Path(__file__).resolve().parent / "configs" / "serve.local.yaml"
log = logging.getLogger(__name__)


@dataclass
class LocalService:
    http_url: str
    grpc_target: str
    started_s: float  # seconds from `ray.init` to the application running


def local_app_config(config_file: Path = LOCAL_CONFIG, **overrides: Any) -> tuple[AppConfig, dict[str, Any]]:
    """The application args and Serve options of a (strictly validated) serve config file."""
    from serve_app.deploy_config import load_deploy_config

    strict = load_deploy_config(config_file)
    app = strict.applications[0]
    options: dict[str, dict[str, Any]] = {}
    for dep in app.deployments:
        opts = dep.model_dump(exclude_none=True, exclude={"name"})
        options[dep.name] = opts
    args = app.args.model_dump()
    args.update({k: v for k, v in overrides.items() if v is not None})
    args["deployment_options"] = {**options, **args.get("deployment_options", {})}
    raw: dict[str, Any] = strict.model_dump(exclude_none=True)
    return AppConfig.model_validate(args), raw


def start(
    cfg: AppConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int = 9000,
    num_cpus: int | None = None,
    request_timeout_s: float | None = 180.0,
) -> LocalService:
    """Start Ray (in this process), Serve with HTTP and gRPC proxies, and the application."""
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from serve_app.app import build_app

    t0 = time.perf_counter()
    cpus = num_cpus or max(4, (os.cpu_count() or 2) + 2)
    if not ray.is_initialized():
        ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=True)
    serve.start(
        http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s},
        grpc_options=gRPCOptions(
            port=grpc_port,
            grpc_servicer_functions=["serve_app.grpc_service.add_ClinieServicer_to_server"],
        ),
    )
    serve.run(build_app(cfg), name="clinie", route_prefix="/")
    return LocalService(f"http://{host}:{port}", f"{host}:{grpc_port}", time.perf_counter() - t0)


def wait_ready(url: str, timeout_s: float = 120.0, strict: bool = False) -> float:
    """Seconds until `/readyz` answers 200 (TimeoutError after `timeout_s`)."""
    t0 = time.perf_counter()
    query = "?strict=true" if strict else ""
    while time.perf_counter() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(f"{url}/readyz{query}", timeout=5) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/readyz was not ready within {timeout_s:.0f} s")


def stop() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
