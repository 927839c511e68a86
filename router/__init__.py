"""The cost-aware router: signals from one fast-tier pass, policies, partial-escalation merge,
calibration. Builds on the core (`clinie`) only; the application wires it to the tiers."""

from router.config import (
    PolicyConfigError,
    RouterConfig,
    fallback_config,
    load_router_config,
    parse_router_config,
)
from router.merge import merge_results
from router.policies import REGISTRY, CostModel, Decision, Policy, PolicyConfig, RouteContext, register
from router.router import LoadState, Router, UnknownPolicy
from router.signals import SIGNALS, NoteSignals, compute_signals, risk

__all__ = [
    "REGISTRY",
    "SIGNALS",
    "CostModel",
    "Decision",
    "LoadState",
    "NoteSignals",
    "Policy",
    "PolicyConfig",
    "PolicyConfigError",
    "RouteContext",
    "Router",
    "RouterConfig",
    "UnknownPolicy",
    "compute_signals",
    "fallback_config",
    "load_router_config",
    "merge_results",
    "parse_router_config",
    "register",
    "risk",
]
