"""Start the application on a local Ray: what `clinie serve`, the integration tests and the load
benchmark run.

Why the numbers: a Ray Serve LLM/vLLM replica holds its CPUs for as long as it lives, and on a
2-core machine Ray's default of 2 logical CPUs leaves nothing for the fast tier (measured: a
second replica waits forever). So the local Ray declares at least 4 logical CPUs, and the local
serve config gives the deployments fractional `num_cpus` that sum below that.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinie.paths import CONFIG_DIR, repo_path
from serve_app import front_door, ray_env, ray_upkeep
from serve_app.config import AppConfig
from serve_app.front_door import FrontDoor

LOCAL_CONFIG = CONFIG_DIR / "serve.local.yaml"
GRPC_SERVICER = "serve_app.grpc_service.add_ClinieServicer_to_server"
log = logging.getLogger(__name__)


@dataclass
class LocalService:
    http_url: str
    grpc_target: str
    started_s: float  # seconds from `ray.init` to the application running
    serve_logs: Path | None = None  # where the replicas' log lines go, when not to stderr as well


def local_app_config(config_file: Path = LOCAL_CONFIG, **overrides: Any) -> tuple[AppConfig, dict[str, Any]]:
    """The application args of a (strictly validated) serve config file with `overrides`, and the
    file's whole content (what `deploy` sends to Serve)."""
    from serve_app.deploy_config import load_deploy_config

    strict = load_deploy_config(config_file)
    args = strict.applications[0].args.model_dump()
    args.update({k: v for k, v in overrides.items() if v is not None})
    return AppConfig.model_validate(args), strict.model_dump(mode="json", exclude_none=True)


def prepare_models(cfg: AppConfig) -> AppConfig:
    """Build (first run) or find the models here, with progress bars, before any replica starts:
    the config with the fast tier's model folder filled in, and the LLM tier switched off (with a
    word on stderr) where no LLM engine is installed to run the embedded default."""
    from deployments.fast_tier.default import resolve_model_dir
    from serve_app.tiers import llm_available

    cfg = cfg.model_copy(update={"fast_tier_model": str(resolve_model_dir(cfg.fast_tier_model))})
    if cfg.llm_enabled and not cfg.llm.model and cfg.llm_config is None:
        if llm_available():
            from deployments.llm_tier.default_model import ensure_default_llm

            ensure_default_llm()
        else:
            print("clinie: vllm is not installed: serving without the LLM tier", file=sys.stderr)
            cfg = cfg.model_copy(update={"llm_enabled": False})
    return cfg


def deploy(cfg: AppConfig, raw: dict[str, Any], timeout_s: float = 120.0) -> None:
    """Deploy (or update) the application from a serve config, as `serve deploy` does.

    The declarative path gives deployments a code version derived from the config, so a change of
    only the Ingress's `user_config` (policies) reconfigures the running replicas instead of
    restarting them. An explicit policy file replaces the config's Ingress user_config, with the
    file's digest, so that editing the file and deploying again is such a change.
    """
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serve_app.app import router_user_config

    config = json.loads(json.dumps(raw))  # a deep copy
    app = config["applications"][0]
    app["args"] = cfg.model_dump(mode="json", exclude={"deployment_options"})
    if not cfg.llm_enabled:  # options for a deployment the app does not have would be refused
        app["deployments"] = [d for d in app["deployments"] if d["name"] != "LLMTier"]
    for dep in app["deployments"]:
        if dep["name"] == "Ingress":
            dep["user_config"] = router_user_config(cfg, dep.get("user_config"))
    schema = ServeDeploySchema.model_validate({"applications": config["applications"]})
    _get_global_client().deploy_apps(schema)
    name = app["name"]
    t0 = time.perf_counter()
    last = ""
    while time.perf_counter() - t0 < timeout_s:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"application {name} failed to deploy: {status.message[:2000]}")
        # UNHEALTHY can be passing: a replica that died is being replaced while the update
        # applies. Wait for it like for DEPLOYING; say what it was if it never recovers.
        last = status.message[:2000] if status is not None else ""
        time.sleep(0.5)
    raise TimeoutError(f"application {name} was not running within {timeout_s:.0f} s: {last}")


def start(
    cfg: AppConfig,
    raw: dict[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int = 9000,
    num_cpus: int | None = None,
    tls: tuple[str, str] | None = None,
    door: FrontDoor = FrontDoor.PROXY,
) -> LocalService:
    """Start Ray (in this process), Serve with HTTP and gRPC on `port` and `grpc_port`, and the
    application; `door` is what listens there (serve_app/front_door.py).

    `tls` (certificate, key; PEM files), else the config's `http_options.ssl_certfile` and
    `ssl_keyfile`: the HTTP proxy serves HTTPS. gRPC stays plaintext (Ray Serve's gRPC proxy has no
    TLS option): put a TLS-terminating proxy in front of it (README, "TLS")."""
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    raw = raw if raw is not None else local_app_config()[1]
    http = raw.get("http_options", {})
    cert, key = tls or (http.get("ssl_certfile"), http.get("ssl_keyfile"))
    front_door.check_tls(door, bool(cert and key))
    t0 = time.perf_counter()
    cpus = num_cpus or max(4, (os.cpu_count() or 2) + 2)
    starting_ray = not ray.is_initialized()
    if starting_ray:
        # Ray's processes read their settings as they start: they inherit them from the raylet started here
        ray_env.install("local", door)
    running = front_door.active()
    if running is not door:  # Ray running already, or the operator's own environment
        raise ValueError(
            f"the {door.value} front door was asked for, but Ray's environment has the {running.value} "
            "one (RAY_SERVE_ENABLE_HA_PROXY)"
        )
    if starting_ray:
        ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=True)
    options: dict[str, Any] = {"host": host, "port": port, "request_timeout_s": http.get("request_timeout_s", 180)}
    if cert and key:
        options.update(ssl_certfile=str(repo_path(cert)), ssl_keyfile=str(repo_path(key)))
    serve.start(
        http_options=options,
        grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER]),
    )
    deploy(cfg, raw)
    scheme = "https" if cert and key else "http"
    logs = None if ray_upkeep.logs_to_stderr() else _session_dir(ray) / Path(*ray_upkeep.SERVE_LOG_SUBDIR)
    return LocalService(f"{scheme}://{host}:{port}", f"{host}:{grpc_port}", time.perf_counter() - t0, logs)


def _session_dir(ray: Any) -> Path:
    """This Ray session's directory (Ray has no public call for it; its documented default link
    is the fallback)."""
    node = getattr(ray._private.worker, "_global_node", None)
    return Path(node.get_session_dir_path()) if node is not None else Path("/tmp/ray/session_latest")


def wait_ready(url: str, timeout_s: float = 120.0, strict: bool = False) -> float:
    """Seconds until `/readyz` answers 200 (TimeoutError after `timeout_s`)."""
    t0 = time.perf_counter()
    query = "?strict=true" if strict else ""
    # Our own proxy, polled for its verdict only: its certificate names the public host, not the
    # address polled here, so it is not verified (nothing is sent but the probe).
    context = ssl._create_unverified_context() if url.startswith("https") else None
    while time.perf_counter() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(f"{url}/readyz{query}", timeout=5, context=context) as r:
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
