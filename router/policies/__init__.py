"""Routing policies: the interface and registry (`base`) and the built-in implementations."""

from router.policies import builtin as _builtin  # noqa: F401  (registers the built-in kinds)
from router.policies import gain as _gain  # noqa: F401  (registers `gain`)
from router.policies.base import REGISTRY, CostModel, Decision, Policy, PolicyConfig, RouteContext, register

__all__ = ["REGISTRY", "CostModel", "Decision", "Policy", "PolicyConfig", "RouteContext", "register"]
