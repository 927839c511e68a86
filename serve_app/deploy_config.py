"""Strict validation of the Ray Serve deploy configs (serve_app/configs/serve.*.yaml).

Why not just Ray's `ray.serve.schema.ServeDeploySchema`: it is shallow on purpose (forward
compatibility). It accepts unknown keys (a typo such as `min_replica` is dropped silently and the
default applies), takes `autoscaling_config` as a plain dict (so `min_replicas > max_replicas` or a
misspelt autoscaling key passes `serve deploy` and fails, or silently does something else, in the
controller), and knows nothing of this application: which deployments exist, that the LLM tier's
GPUs belong in its placement-group bundles, or that those bundles must match the LLM config's
tensor_parallel_size.

So `load_deploy_config` checks, in order, and stops at the first stage that fails:
1. YAML, refusing duplicate keys (PyYAML keeps the last one silently);
2. the strict models below: the subset of the Serve config schema this project uses, every
   model `extra="forbid"`, with cross-field rules;
3. wiring between deployments: the LLM tier's placement against the LLMTierConfig that
   `args.llm_config` names, and the Ingress's user_config (the router's policies) against
   router.config.RouterConfig
   and the LLM tier's autoscaling;
4. Ray's own `ServeDeploySchema.model_validate` (pydantic v2 in Ray 2.60), so that what passes
   here is also what `serve deploy` accepts.
Every failure is a ValueError whose lines start with the offending field's path, for example
`applications.0.deployments.1.autoscaling_config.min_replicas`.

Run as `python -m serve_app.deploy_config FILE...` to check configs before a deploy.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clinie.paths import REPO_ROOT, repo_path
from deployments.llm_tier.config import LLMTierConfig
from serve_app.config import AppConfig

"""Relative paths in `args` (llm_config, fast_tier_model) are resolved against this directory."""

DEPLOYMENT_NAMES: tuple[str, ...] = ("Ingress", "FastTier", "LLMTier")
"""The deployments serve_app.app:build_app binds. A config entry for any other name would be
ignored by Serve's code path for this app (or fail late); every one of these must be configured,
so no replica runs on Ray's silent defaults (1 CPU, 5 ongoing requests, no queue bound)."""

DeploymentName = Literal["Ingress", "FastTier", "LLMTier"]

# module.sub:attribute (the Serve import-path form we use) and a dotted function path (gRPC).
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_DOTTED_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class ConfigFieldError(ValueError):
    """A cross-field rule broken. `field` is the dotted path, relative to the model being validated,
    of the field to blame: pydantic reports model-validator errors at the model, not the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Strict(BaseModel):
    """Unknown keys are errors: in a deploy config a typo is a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")


class HTTPOptions(_Strict):
    """The HTTP proxy (ServeDeploySchema.http_options)."""

    host: str = Field(description="Interface the HTTP proxies listen on (0.0.0.0: all; 127.0.0.1: local only).")
    port: int = Field(ge=1, le=65535, description="HTTP port of every proxy.")
    request_timeout_s: float = Field(
        gt=0,
        description="End-to-end HTTP deadline at the proxy. Required: Ray's default is no timeout, so a "
        "stuck request would hold its slot forever.",
    )
    keep_alive_timeout_s: int | None = Field(
        default=None, ge=1, description="Idle keep-alive of client connections; null: Ray's default."
    )
    ssl_certfile: str | None = Field(
        default=None, description="PEM certificate (chain): the proxies serve HTTPS. Goes with ssl_keyfile."
    )
    ssl_keyfile: str | None = Field(default=None, description="PEM private key of ssl_certfile.")

    @model_validator(mode="after")
    def _tls_pair(self) -> HTTPOptions:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigFieldError("ssl_certfile", "ssl_certfile and ssl_keyfile go together")
        return self


class GRPCOptions(_Strict):
    """The gRPC proxy (ServeDeploySchema.grpc_options)."""

    port: int = Field(ge=1, le=65535, description="gRPC port of every proxy.")
    grpc_servicer_functions: list[str] = Field(
        min_length=1,
        description="Import paths of the generated add_*Servicer_to_server functions; with none, Serve "
        "starts no gRPC server, so an empty list here is a mistake.",
    )
    request_timeout_s: float | None = Field(default=None, gt=0, description="gRPC deadline; null: none.")

    @model_validator(mode="after")
    def _paths(self) -> GRPCOptions:
        for i, path in enumerate(self.grpc_servicer_functions):
            if not _DOTTED_PATH.match(path):
                raise ConfigFieldError(f"grpc_servicer_functions.{i}", f"{path!r} is not a dotted import path")
        return self


class AutoscalingConfig(_Strict):
    """Replica autoscaling on ongoing requests (queued + running) per replica. The five main knobs
    are required: Ray's defaults (e.g. a 600 s downscale delay) should be a decision, not an accident."""

    min_replicas: int = Field(ge=0, description="Replicas kept however idle (0 allows scale to zero).")
    initial_replicas: int | None = Field(
        default=None, ge=0, description="Replicas at first deploy; null: min_replicas."
    )
    max_replicas: int = Field(ge=1, description="Upper bound; must fit the cluster's capacity for this deployment.")
    target_ongoing_requests: float = Field(
        gt=0,
        description="Ongoing requests per replica the autoscaler steers to. For @serve.batch deployments, "
        "the batch size: scale when batches are full.",
    )
    upscale_delay_s: float = Field(ge=0, description="Sustained overload before replicas are added.")
    downscale_delay_s: float = Field(ge=0, description="Sustained underload before replicas are removed.")
    downscale_to_zero_delay_s: float | None = Field(
        default=None, ge=0, description="Delay of the 1 -> 0 step; null: downscale_delay_s."
    )
    look_back_period_s: float | None = Field(
        default=None, gt=0, description="Window the load metric is averaged over; null: Ray's default (30 s)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ConfigFieldError(
                "min_replicas", f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ConfigFieldError(
                "initial_replicas",
                f"initial_replicas ({self.initial_replicas}) is outside "
                f"[min_replicas, max_replicas] = [{self.min_replicas}, {self.max_replicas}]",
            )
        return self


class RayActorOptions(_Strict):
    """Resources of each replica actor (the subset we use)."""

    num_cpus: float = Field(
        gt=0,
        description="Logical CPUs reserved per replica. Required and > 0: Ray's implicit 1 per replica is "
        "what overcommits a small machine, and 0 lets replicas pile onto one node unbounded.",
    )
    num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPUs of the replica actor itself. Leave unset where placement_group_bundles carry the "
        "GPUs (they are the engine workers').",
    )
    memory: float | None = Field(default=None, gt=0, description="Heap bytes reserved per replica; null: none.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per replica.")


Bundle = dict[str, float]


class DeploymentConfig(_Strict):
    """Options of one deployment, overriding those in code (ServeApplicationSchema.deployments)."""

    name: DeploymentName = Field(description="One of the deployments build_app binds.")
    num_replicas: int | None = Field(
        default=None, ge=1, description="Fixed replica count; exclusive with autoscaling_config."
    )
    autoscaling_config: AutoscalingConfig | None = Field(
        default=None, description="Autoscaling bounds and targets; exclusive with num_replicas."
    )
    max_ongoing_requests: int = Field(
        ge=1,
        description="Hard cap of requests a caller sends one replica at a time (running + waiting inside it).",
    )
    max_queued_requests: int = Field(
        description="Requests waiting at each caller for a replica slot; beyond it: BackPressureError / "
        "HTTP 503 at once. -1 means unbounded (refused nowhere, but then overload shows up as timeouts).",
    )
    user_config: dict[str, Any] | None = Field(
        default=None, description="Passed to the deployment's reconfigure(); changes need no restart."
    )
    ray_actor_options: RayActorOptions = Field(description="Resources of each replica actor.")
    placement_group_bundles: list[Bundle] | None = Field(
        default=None,
        description="Resource bundles reserved per replica as one placement group; the replica actor runs "
        "in the first (so ray_actor_options must fit it), its child actors (vLLM workers) in all.",
    )
    placement_group_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = Field(
        default=None, description="How the bundles are placed; STRICT_PACK: all on one node."
    )
    max_replicas_per_node: int | None = Field(
        default=None, ge=1, le=100, description="Spread cap per node; Ray forbids it with bundles."
    )
    graceful_shutdown_timeout_s: float | None = Field(
        default=None, ge=0, description="How long a stopping replica may finish in-flight work."
    )
    health_check_period_s: float | None = Field(default=None, gt=0, description="Replica health-check period.")
    health_check_timeout_s: float | None = Field(default=None, gt=0, description="Health-check deadline.")

    @model_validator(mode="after")
    def _rules(self) -> DeploymentConfig:
        if (self.num_replicas is None) == (self.autoscaling_config is None):
            raise ConfigFieldError("autoscaling_config", "set exactly one of num_replicas and autoscaling_config")
        if self.autoscaling_config is not None:
            target = self.autoscaling_config.target_ongoing_requests
            if target > self.max_ongoing_requests:
                raise ConfigFieldError(
                    "autoscaling_config.target_ongoing_requests",
                    f"target_ongoing_requests ({target:g}) exceeds max_ongoing_requests "
                    f"({self.max_ongoing_requests}): a replica can never reach its target, so the "
                    "autoscaler scales out on every request",
                )
        if self.max_queued_requests != -1 and self.max_queued_requests < 1:
            raise ConfigFieldError(
                "max_queued_requests", f"must be -1 (unbounded) or >= 1, got {self.max_queued_requests}"
            )
        self._check_bundles()
        return self

    def _check_bundles(self) -> None:
        bundles = self.placement_group_bundles
        if self.placement_group_strategy is not None and not bundles:
            raise ConfigFieldError("placement_group_bundles", "placement_group_strategy needs non-empty bundles")
        if bundles is None:
            return
        if not bundles:
            raise ConfigFieldError("placement_group_bundles", "an empty bundle list reserves nothing; omit it")
        if self.placement_group_strategy is None:
            raise ConfigFieldError(
                "placement_group_strategy", "state the strategy of the bundles (Ray's silent default is PACK)"
            )
        if self.max_replicas_per_node is not None:
            raise ConfigFieldError("max_replicas_per_node", "Ray forbids max_replicas_per_node with bundles")
        for i, bundle in enumerate(bundles):
            if not bundle:
                raise ConfigFieldError(f"placement_group_bundles.{i}", "empty bundle")
            for resource, amount in bundle.items():
                if amount <= 0:
                    raise ConfigFieldError(f"placement_group_bundles.{i}.{resource}", f"must be > 0, got {amount:g}")
        first, actor = bundles[0], self.ray_actor_options
        if actor.num_cpus > first.get("CPU", 0):
            raise ConfigFieldError(
                "ray_actor_options.num_cpus",
                f"num_cpus ({actor.num_cpus:g}) does not fit the first bundle's CPU ({first.get('CPU', 0):g}); "
                "the replica actor is placed in that bundle",
            )
        if bundle_gpus(bundles) > 0 and actor.num_gpus:
            raise ConfigFieldError(
                "ray_actor_options.num_gpus",
                "with GPUs in placement_group_bundles the replica must not take one: they are the "
                "engine workers' (one per tensor-parallel rank)",
            )


# `args` of the application: the builder's own config model, so the two cannot drift apart.
AppArgs = AppConfig


class ApplicationConfig(_Strict):
    """One Serve application (ServeDeploySchema.applications[i])."""

    name: str = Field(min_length=1, description="Application name, unique in the cluster.")
    route_prefix: str = Field(pattern=r"^/", description="HTTP route prefix of the ingress; starts with '/'.")
    import_path: str = Field(description="module.path:builder of the application (an application builder).")
    args: AppArgs = Field(default_factory=AppArgs, description="Arguments of the application builder.")
    deployments: list[DeploymentConfig] = Field(description="Options of each of the four deployments.")

    @model_validator(mode="after")
    def _rules(self) -> ApplicationConfig:
        if not _IMPORT_PATH.match(self.import_path):
            raise ConfigFieldError("import_path", f"{self.import_path!r} is not of the form module.path:builder")
        seen: set[str] = set()
        for i, dep in enumerate(self.deployments):
            if dep.name in seen:
                raise ConfigFieldError(f"deployments.{i}.name", f"deployment {dep.name!r} is configured twice")
            seen.add(dep.name)
        missing = [n for n in DEPLOYMENT_NAMES if n not in seen]
        if missing:
            raise ConfigFieldError("deployments", f"missing deployments: {', '.join(missing)}")
        return self

    def deployment(self, name: str) -> DeploymentConfig:
        """The config of deployment `name` (all four are present once validated)."""
        return next(d for d in self.deployments if d.name == name)


class StrictServeConfig(_Strict):
    """A `serve deploy` config (ServeDeploySchema), strictly."""

    proxy_location: Literal["Disabled", "HeadOnly", "EveryNode"] = Field(
        description="Where HTTP/gRPC proxies run: every node with a replica, the head only, or none."
    )
    http_options: HTTPOptions = Field(description="HTTP proxy options.")
    grpc_options: GRPCOptions = Field(description="gRPC proxy options.")
    applications: list[ApplicationConfig] = Field(min_length=1, description="The applications to run.")

    @model_validator(mode="after")
    def _rules(self) -> StrictServeConfig:
        if self.http_options.port == self.grpc_options.port:
            raise ConfigFieldError("grpc_options.port", f"same port as http_options.port ({self.http_options.port})")
        names: set[str] = set()
        prefixes: set[str] = set()
        for i, app in enumerate(self.applications):
            if app.name in names:
                raise ConfigFieldError(f"applications.{i}.name", f"application {app.name!r} appears twice")
            if app.route_prefix in prefixes:
                raise ConfigFieldError(f"applications.{i}.route_prefix", f"route prefix {app.route_prefix!r} is taken")
            names.add(app.name)
            prefixes.add(app.route_prefix)
        return self


def bundle_gpus(bundles: Sequence[Mapping[str, float]] | None) -> float:
    """GPUs reserved by a replica's placement group (the sum over its bundles)."""
    return sum(b.get("GPU", 0) for b in bundles or ())


def load_llm_tier_config(app: ApplicationConfig, repo_root: Path = REPO_ROOT) -> LLMTierConfig:
    """The LLMTierConfig the application's args name (defaults when `llm_config` is null)."""
    if app.args.llm_config is None:
        return LLMTierConfig()
    return LLMTierConfig(**yaml.safe_load(repo_path(app.args.llm_config, repo_root).read_text()))


def _check_llm_placement(config: StrictServeConfig, repo_root: Path) -> list[str]:
    """The LLMTier reserves exactly the GPUs its engine uses: tensor_parallel_size GPU bundles on GPU,
    none on CPU. Too few and vLLM waits forever for a GPU; too many sit idle on the most expensive nodes."""
    problems: list[str] = []
    for a, app in enumerate(config.applications):
        try:
            llm = load_llm_tier_config(app, repo_root)
        except (OSError, yaml.YAMLError, ValidationError, TypeError) as exc:
            problems.append(f"applications.{a}.args.llm_config: cannot load an LLMTierConfig: {exc}")
            continue
        d = next(i for i, dep in enumerate(app.deployments) if dep.name == "LLMTier")
        dep = app.deployments[d]
        at = f"applications.{a}.deployments.{d}"
        gpus = bundle_gpus(dep.placement_group_bundles)
        if llm.accelerator == "gpu":
            if gpus != llm.tensor_parallel_size:
                problems.append(
                    f"{at}.placement_group_bundles: reserves {gpus:g} GPUs, but the LLM config runs "
                    f"tensor_parallel_size={llm.tensor_parallel_size}"
                )
            elif llm.tensor_parallel_size > 1 and dep.placement_group_strategy != "STRICT_PACK":
                problems.append(
                    f"{at}.placement_group_strategy: tensor parallelism must stay on one node (STRICT_PACK), "
                    f"got {dep.placement_group_strategy}"
                )
        elif gpus or dep.ray_actor_options.num_gpus:
            problems.append(f"{at}: the LLM config runs on CPU, yet the LLMTier reserves GPUs")
    return problems


ROUTER_USER_CONFIG_KEYS = frozenset({"policies_file", "policies_sha256", "config"})
"""What router.host.RouterHost.reconfigure (through Ingress.reconfigure) reads; it ignores any
other key silently."""


def _check_router_user_config(config: StrictServeConfig) -> list[str]:
    """The Ingress's user_config (the router's policies): only keys the router reads; an inline
    `config` that parses as a RouterConfig (the router would refuse it at reconfigure and keep
    running its old policies); and a load limit that lets the LLM tier's autoscaler see load above
    its target (if the router
    already sheds to the fast tier at `max_llm_queue` in flight, the LLM tier never scales out)."""
    from router.config import PolicyConfigError, RouterConfig, fallback_config, load_router_config, parse_router_config

    problems: list[str] = []
    for a, app in enumerate(config.applications):
        d = next(i for i, dep in enumerate(app.deployments) if dep.name == "Ingress")
        at = f"applications.{a}.deployments.{d}.user_config"
        user_config = app.deployments[d].user_config or {}
        for key in sorted(set(user_config) - ROUTER_USER_CONFIG_KEYS):
            problems.append(
                f"{at}.{key}: unknown key (the router reads only {', '.join(sorted(ROUTER_USER_CONFIG_KEYS))})"
            )
        router_cfg: RouterConfig | None = None
        if user_config.get("config"):
            try:
                router_cfg = parse_router_config(user_config["config"])
            except PolicyConfigError as exc:
                problems.append(f"{at}.config.{exc}")
                continue
        elif user_config.get("policies_file"):
            try:
                router_cfg = load_router_config(repo_path(str(user_config["policies_file"]), REPO_ROOT))
            except PolicyConfigError as exc:
                problems.append(f"{at}.policies_file: {exc}")
                continue
        else:
            router_cfg = fallback_config()  # what the router runs with neither key
        llm_auto = app.deployment("LLMTier").autoscaling_config
        if router_cfg is None or llm_auto is None or llm_auto.max_replicas == llm_auto.min_replicas:
            continue
        if router_cfg.load.max_llm_queue <= llm_auto.target_ongoing_requests:
            problems.append(
                f"{at}.config.load.max_llm_queue: {router_cfg.load.max_llm_queue} sheds LLM requests before "
                f"the LLMTier reaches its target_ongoing_requests ({llm_auto.target_ongoing_requests:g}), so the "
                "LLM tier never scales out"
            )
    return problems


def _format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """One `dotted.path: message` line per pydantic error, blaming the field a ConfigFieldError names."""
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, ConfigFieldError):
            loc += cause.field.split(".")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema: a typo?)"
        lines.append(f"{prefix}{'.'.join(loc) or '<top level>'}: {msg}")
    return lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def validate_deploy_config(
    data: Any, *, source: str = "<config>", repo_root: Path = REPO_ROOT, check_with_ray: bool = True
) -> StrictServeConfig:
    """Validate an already-parsed config (stages 2-4 of the module docstring); ValueError on failure."""
    try:
        config = StrictServeConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_error_text(source, _format_errors(exc))) from None
    problems = _check_llm_placement(config, repo_root) + _check_router_user_config(config)
    if problems:
        raise ValueError(_error_text(source, problems))
    if check_with_ray:
        from ray.serve.schema import ServeDeploySchema  # imports Ray: only once our checks passed

        try:
            ServeDeploySchema.model_validate(data)
        except ValidationError as exc:
            raise ValueError(_error_text(source, _format_errors(exc, prefix="(Ray) "))) from None
    return config


def load_deploy_config(path: str | Path, *, repo_root: Path = REPO_ROOT) -> StrictServeConfig:
    """Read and validate a `serve deploy` YAML; ValueError naming the offending field path(s)."""
    path = Path(path)
    try:
        # A SafeLoader subclass: no arbitrary Python objects.
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"serve config {path} is not valid YAML: {exc}") from None
    return validate_deploy_config(data, source=str(path), repo_root=repo_root)


def _error_text(source: str, lines: list[str]) -> str:
    return f"serve config {source} is invalid:\n" + "\n".join(f"  {line}" for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Check each config file given; exit status 1 if any is invalid."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m serve_app.deploy_config SERVE_CONFIG.yaml...", file=sys.stderr)
        return 2
    status = 0
    for p in paths:
        try:
            load_deploy_config(p)
        except (ValueError, OSError) as exc:
            print(exc, file=sys.stderr)
            status = 1
        else:
            print(f"{p}: ok")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
