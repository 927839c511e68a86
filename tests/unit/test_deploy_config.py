"""serve_app/deploy_config.py: the checked-in Serve configs pass, and each rule names the field it blames."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.llm_tier.config import LLMTierConfig
from serve_app.deploy_config import (
    DEPLOYMENT_NAMES,
    REPO_ROOT,
    bundle_gpus,
    load_deploy_config,
    main,
    validate_deploy_config,
)

CONFIGS = REPO_ROOT / "serve_app" / "configs"
PRODUCTION = CONFIGS / "serve.production.yaml"
LOCAL = CONFIGS / "serve.local.yaml"
LLM_TP8 = CONFIGS / "llm_tier.llama3-70b-tp8.yaml"
# Deployment order in both configs: where an error path's index points.
INGRESS, FAST, LLM = 0, 1, 2
DEP = "applications.0.deployments"


@pytest.fixture(scope="module")
def production() -> dict[str, Any]:
    return yaml.safe_load(PRODUCTION.read_text())


def _dep(data: dict[str, Any], index: int) -> dict[str, Any]:
    """Deployment `index` of the (only) application of a raw config dict."""
    return data["applications"][0]["deployments"][index]


def _refused(data: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> str:
    """The error message for `data` after `edit` (on a copy)."""
    bad = copy.deepcopy(data)
    edit(bad)
    with pytest.raises(ValueError) as info:
        validate_deploy_config(bad)
    return str(info.value)


@pytest.mark.parametrize("path", [PRODUCTION, LOCAL], ids=["production", "local"])
def test_checked_in_configs_validate(path: Path) -> None:
    cfg = load_deploy_config(path)
    app = cfg.applications[0]
    assert (app.name, app.route_prefix, app.import_path) == ("clinie", "/", "serve_app.app:build_app")
    assert [d.name for d in app.deployments] == list(DEPLOYMENT_NAMES)
    assert cfg.grpc_options.port == 9000
    assert cfg.grpc_options.grpc_servicer_functions == ["serve_app.grpc_service.add_ClinieServicer_to_server"]
    for dep in app.deployments:
        assert dep.autoscaling_config is not None and dep.max_queued_requests >= 1, dep.name


def test_cli_checks_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([str(PRODUCTION), str(LOCAL)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(PRODUCTION.read_text().replace("max_replicas: 24", "max_replicas: 1"))
    assert main([str(bad)]) == 1
    assert f"{DEP}.{FAST}.autoscaling_config.min_replicas" in capsys.readouterr().err


def test_ray_alone_accepts_what_the_strict_check_refuses(production: dict[str, Any]) -> None:
    """Why this module exists: Ray's schema lets a typo and min > max through."""
    from ray.serve.schema import ServeDeploySchema

    bad = copy.deepcopy(production)
    auto = _dep(bad, FAST)["autoscaling_config"]
    auto["min_replica"] = 3
    auto["min_replicas"], auto["max_replicas"] = 5, 1
    ServeDeploySchema.model_validate(bad)  # no error
    with pytest.raises(ValueError, match="min_replica"):
        validate_deploy_config(bad)


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (
            lambda d: _dep(d, FAST)["autoscaling_config"].update(min_replica=1),
            f"{DEP}.{FAST}.autoscaling_config.min_replica",
        ),
        (lambda d: _dep(d, FAST).update(max_ongoing_request=8), f"{DEP}.{FAST}.max_ongoing_request"),
        (lambda d: _dep(d, LLM)["ray_actor_options"].update(num_cpu=1), f"{DEP}.{LLM}.ray_actor_options.num_cpu"),
        (lambda d: d["http_options"].update(request_timeout=60), "http_options.request_timeout"),
        (lambda d: d["applications"][0]["args"].update(llm_confg="x.yaml"), "applications.0.args.llm_confg"),
        (lambda d: d.update(proxy_locaton="HeadOnly"), "proxy_locaton"),
    ],
    ids=["autoscaling", "deployment", "actor-options", "http", "args", "top-level"],
)
def test_typo_key_is_refused_by_name(
    production: dict[str, Any], edit: Callable[[dict[str, Any]], None], path: str
) -> None:
    message = _refused(production, edit)
    assert f"{path}: unknown key" in message


def test_min_above_max_is_refused(production: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        _dep(d, FAST)["autoscaling_config"].update(min_replicas=5, max_replicas=2)

    message = _refused(production, edit)
    assert f"{DEP}.{FAST}.autoscaling_config.min_replicas: min_replicas (5) exceeds max_replicas (2)" in message


def test_initial_replicas_outside_bounds_is_refused(production: dict[str, Any]) -> None:
    message = _refused(production, lambda d: _dep(d, FAST)["autoscaling_config"].update(initial_replicas=1))
    assert f"{DEP}.{FAST}.autoscaling_config.initial_replicas" in message


def test_target_above_max_ongoing_is_refused(production: dict[str, Any]) -> None:
    message = _refused(production, lambda d: _dep(d, LLM).update(max_ongoing_requests=8))
    assert f"{DEP}.{LLM}.autoscaling_config.target_ongoing_requests: target_ongoing_requests (16)" in message


def test_unknown_deployment_name_is_refused(production: dict[str, Any]) -> None:
    message = _refused(production, lambda d: _dep(d, FAST).update(name="FastTeir"))
    assert f"{DEP}.{FAST}.name:" in message and "'FastTier'" in message


def test_the_former_router_deployment_is_refused(production: dict[str, Any]) -> None:
    """The router runs inside the Ingress now: a config still naming a Router deployment would
    configure nothing, so it is refused rather than ignored."""
    extra = {"name": "Router", "max_ongoing_requests": 8, "max_queued_requests": 8, "num_replicas": 1}
    message = _refused(production, lambda d: d["applications"][0]["deployments"].append(extra))
    assert f"{DEP}.3.name: Input should be 'Ingress', 'FastTier' or 'LLMTier'" in message


def test_missing_and_duplicate_deployments_are_refused(production: dict[str, Any]) -> None:
    assert "missing deployments: FastTier" in _refused(
        production, lambda d: d["applications"][0]["deployments"].pop(FAST)
    )

    def twice(d: dict[str, Any]) -> None:
        _dep(d, LLM)["name"] = "FastTier"

    assert f"{DEP}.{LLM}.name: deployment 'FastTier' is configured twice" in _refused(production, twice)


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("max_queued_requests", 0, "max_queued_requests"),
        ("max_queued_requests", -2, "max_queued_requests"),
        ("max_ongoing_requests", 0, "max_ongoing_requests"),
    ],
)
def test_bad_request_limits_are_refused(production: dict[str, Any], field: str, value: int, path: str) -> None:
    message = _refused(production, lambda d: _dep(d, INGRESS).update({field: value}))
    assert f"{DEP}.{INGRESS}.{path}" in message


def test_unbounded_queue_is_allowed(production: dict[str, Any]) -> None:
    ok = copy.deepcopy(production)
    ok["applications"][0]["deployments"][INGRESS]["max_queued_requests"] = -1
    validate_deploy_config(ok)


def test_num_cpus_must_be_positive(production: dict[str, Any]) -> None:
    message = _refused(production, lambda d: _dep(d, FAST)["ray_actor_options"].update(num_cpus=0))
    assert f"{DEP}.{FAST}.ray_actor_options.num_cpus" in message


def test_both_or_neither_of_num_replicas_and_autoscaling_is_refused(production: dict[str, Any]) -> None:
    message = _refused(production, lambda d: _dep(d, FAST).update(num_replicas=2))
    assert f"{DEP}.{FAST}.autoscaling_config: set exactly one" in message


def test_placement_rules(production: dict[str, Any]) -> None:
    # A strategy without bundles.
    assert f"{DEP}.{LLM}.placement_group_bundles: placement_group_strategy needs non-empty bundles" in _refused(
        production, lambda d: _dep(d, LLM).pop("placement_group_bundles")
    )
    # Bundles without a stated strategy.
    assert f"{DEP}.{LLM}.placement_group_strategy" in _refused(
        production, lambda d: _dep(d, LLM).pop("placement_group_strategy")
    )
    # The replica taking a GPU the TP workers need.
    assert f"{DEP}.{LLM}.ray_actor_options.num_gpus" in _refused(
        production, lambda d: _dep(d, LLM)["ray_actor_options"].update(num_gpus=1)
    )
    # The replica actor not fitting the first bundle.
    assert f"{DEP}.{LLM}.ray_actor_options.num_cpus" in _refused(
        production, lambda d: _dep(d, LLM)["ray_actor_options"].update(num_cpus=2)
    )
    # Fewer GPUs than the LLM config's tensor_parallel_size.
    message = _refused(production, lambda d: _dep(d, LLM)["placement_group_bundles"].pop())
    assert f"{DEP}.{LLM}.placement_group_bundles: reserves 7 GPUs, but the LLM config runs tensor_parallel_size=8" in (
        message
    )
    # TP across nodes.
    assert f"{DEP}.{LLM}.placement_group_strategy: tensor parallelism must stay on one node" in _refused(
        production, lambda d: _dep(d, LLM).update(placement_group_strategy="PACK")
    )


def test_llm_config_that_does_not_load_is_refused(production: dict[str, Any]) -> None:
    message = _refused(production, lambda d: d["applications"][0]["args"].update(llm_config="no/such/file.yaml"))
    assert "applications.0.args.llm_config: cannot load an LLMTierConfig" in message


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    text = PRODUCTION.read_text().replace("  port: 8000\n", "  port: 8000\n  port: 8001\n", 1)
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="duplicate key 'port'"):
        load_deploy_config(path)


def test_production_llm_tier_reserves_8_gpus_strict_pack() -> None:
    app = load_deploy_config(PRODUCTION).applications[0]
    llm = app.deployment("LLMTier")
    assert bundle_gpus(llm.placement_group_bundles) == 8
    assert llm.placement_group_bundles is not None and all(b.get("GPU") == 1 for b in llm.placement_group_bundles)
    assert llm.placement_group_strategy == "STRICT_PACK"
    assert not llm.ray_actor_options.num_gpus  # the GPUs are the bundles'
    # No other deployment reserves a GPU: the CPU tiers must never pin a p5.
    for dep in app.deployments:
        if dep.name != "LLMTier":
            assert not dep.ray_actor_options.num_gpus and not dep.placement_group_bundles, dep.name


def test_production_llm_config_file_agrees_with_tp8_bundles() -> None:
    app = load_deploy_config(PRODUCTION).applications[0]
    assert app.args.llm_config is not None
    assert (REPO_ROOT / app.args.llm_config).resolve() == LLM_TP8.resolve()
    llm_cfg = LLMTierConfig(**yaml.safe_load(LLM_TP8.read_text()))
    assert llm_cfg.accelerator == "gpu"
    assert llm_cfg.tensor_parallel_size == bundle_gpus(app.deployment("LLMTier").placement_group_bundles) == 8
    # max_replicas of the LLM tier matches the GPU node group's max_workers (one replica per p5).
    cluster = yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())
    gpu_group = cluster["available_node_types"]["gpu.worker"]
    auto = app.deployment("LLMTier").autoscaling_config
    assert auto is not None and auto.max_replicas == gpu_group["max_workers"]


def test_local_config_fits_four_logical_cpus_without_gpus() -> None:
    """serve.local.yaml is for a 2-core machine with `ray start --num-cpus=4`: every replica at
    max_replicas must be placeable, and nothing may ask for a GPU."""
    app = load_deploy_config(LOCAL).applications[0]
    total = 0.0
    for dep in app.deployments:
        assert dep.autoscaling_config is not None
        assert not dep.ray_actor_options.num_gpus and not dep.placement_group_bundles, dep.name
        total += dep.autoscaling_config.max_replicas * dep.ray_actor_options.num_cpus
    assert total <= 4
    llm = app.deployment("LLMTier").autoscaling_config
    assert llm is not None and llm.min_replicas == llm.max_replicas == 1
    assert app.args.llm_config is None  # LLMTierConfig defaults: CPU, TP=1


def test_cpu_llm_config_with_gpu_bundles_is_refused(production: dict[str, Any]) -> None:
    message = _refused(production, lambda d: d["applications"][0]["args"].update(llm_config=None))
    assert f"{DEP}.{LLM}: the LLM config runs on CPU, yet the LLMTier reserves GPUs" in message


def test_port_clash_is_refused(production: dict[str, Any]) -> None:
    assert "grpc_options.port: same port" in _refused(production, lambda d: d["grpc_options"].update(port=8000))


def test_router_user_config_key_the_router_ignores_is_refused(production: dict[str, Any]) -> None:
    """Ingress.reconfigure (the router's policies) reads `config` / `policies_file` only; anything
    else would be dropped silently and the router would run its fallback policies."""
    message = _refused(production, lambda d: _dep(d, INGRESS).update(user_config={"default_policy": "default"}))
    assert f"{DEP}.{INGRESS}.user_config.default_policy: unknown key" in message


def test_router_inline_config_is_validated_as_a_router_config(production: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        _dep(d, INGRESS)["user_config"]["config"]["policies"]["confidence"]["signal"] = "min_token_porb"

    assert f"{DEP}.{INGRESS}.user_config.config.policies.confidence.signal" in _refused(production, edit)


def test_router_shedding_below_the_llm_target_is_refused(production: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        _dep(d, INGRESS)["user_config"]["config"]["load"]["max_llm_queue"] = 16

    message = _refused(production, edit)
    assert f"{DEP}.{INGRESS}.user_config.config.load.max_llm_queue: 16 sheds" in message
    # The router's built-in fallback (no user_config) sheds at 8: too early for production too.
    assert "max_llm_queue: 8 sheds" in _refused(production, lambda d: _dep(d, INGRESS).pop("user_config"))


def test_https_needs_both_certificate_and_key(production: dict[str, Any]) -> None:
    message = _refused(production, lambda d: d["http_options"].update(ssl_certfile="/secrets/tls.crt"))
    assert "http_options.ssl_certfile: ssl_certfile and ssl_keyfile go together" in message
    both = copy.deepcopy(production)
    both["http_options"].update(ssl_certfile="/secrets/tls.crt", ssl_keyfile="/secrets/tls.key")
    validate_deploy_config(both, check_with_ray=False)
