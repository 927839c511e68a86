"""The application graph: Ingress (with the router in it) -> (FastTier, LLMTier), composed with
DeploymentHandles.

`build_app(args)` is the application builder that `serve deploy` configs name
(`import_path: serve_app.app:build_app`); `clinie serve` calls it too. The tiers and the router
never import each other: this module wires them together at bind time. The router runs inside the
Ingress replica (its decision is sub-millisecond; a deployment of its own cost a hop that shipped
each note's analysis between processes): its policies are the Ingress's `user_config`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from ray.serve import Application

from clinie.ood import OOD_FILE
from clinie.paths import policies_path, repo_path
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.deployment import FastTierDeployment
from deployments.llm_tier.config import LLMTierConfig
from deployments.llm_tier.deployment import LLMTierDeployment
from serve_app.config import AppConfig
from serve_app.ingress import Ingress


def llm_config_of(cfg: AppConfig) -> LLMTierConfig:
    if cfg.llm_config is None:
        return cfg.llm
    return LLMTierConfig.model_validate(yaml.safe_load(repo_path(cfg.llm_config).read_text()))


def router_user_config(cfg: AppConfig, configured: dict[str, Any] | None) -> dict[str, Any]:
    """The Ingress's user_config (the router's policies): an explicit `policies_file` in the app args wins over the
    configured one; with neither, the default policy file. Always with the file's digest."""
    if cfg.policies_file or not configured:
        configured = {"policies_file": str(policies_path(cfg.policies_file))}
    return with_file_digest(configured)


def with_file_digest(user_config: dict[str, Any]) -> dict[str, Any]:
    """Add the policy file's content digest to the router's user_config: Serve reconfigures a
    replica only when user_config changes, so an edited file (same path) must change it too.
    Re-running `serve deploy` / `serve.run` after editing the file then hot-reloads the policies."""
    if not user_config.get("policies_file"):
        return user_config
    path = repo_path(str(user_config["policies_file"]))
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        digest = "unreadable"  # the Router reports the read error and keeps its policies
    return {**user_config, "policies_sha256": digest}


def build_app(args: dict[str, Any] | AppConfig | None = None) -> Application:
    """Bind the three deployments. Options in `deployment_options` override the code defaults."""
    cfg = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    model_dir = resolve_model_dir(repo_path(cfg.fast_tier_model) if cfg.fast_tier_model else None)
    llm_cfg = llm_config_of(cfg)
    opts = cfg.deployment_options

    fast_args = (
        str(model_dir),
        cfg.fast_tier_precision,
        cfg.fast_max_batch_size,
        cfg.fast_batch_wait_timeout_s,
        cfg.fast_tier_threads,
        cfg.model_nice,
        cfg.fast_tier_span_floor.model_dump(),
    )
    fast = FastTierDeployment.options(**opts.get("FastTier", {})).bind(*fast_args)
    llm = None
    if cfg.llm_enabled:
        llm_opts = dict(opts.get("LLMTier", {}))
        if llm_cfg.accelerator == "gpu" and "placement_group_bundles" not in llm_opts:
            # one engine per replica; TP=N reserves N GPUs on one node
            llm_opts["placement_group_bundles"] = [{"CPU": 1, "GPU": 1}] * llm_cfg.tensor_parallel_size
            llm_opts["placement_group_strategy"] = "STRICT_PACK"
        llm_args = llm_cfg.model_dump(mode="json")
        llm = LLMTierDeployment.options(**llm_opts).bind(llm_args, cfg.model_nice)
    ingress_cfg = cfg.model_copy(update={"llm": llm_cfg}).model_dump(mode="json")
    ingress_opts = dict(opts.get("Ingress", {}))
    ingress_opts["user_config"] = router_user_config(cfg, ingress_opts.get("user_config"))
    ood = str(model_dir / OOD_FILE)
    return Ingress.options(**ingress_opts).bind(fast, llm, ingress_cfg, ood)
