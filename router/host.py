"""The router as the serving application hosts it: policies from a Serve `user_config` (hot
reload), out-of-distribution statistics, and the per-note decision.

No Ray here: the ingress deployment owns one `RouterHost` and calls `reconfigure` from its own
`reconfigure(user_config)`, so `serve deploy` with a changed policy file reconfigures the running
replicas without a redeploy. A config that fails validation is refused and the running one stays
in force (the error is logged with the offending field and shown by `status()`).

user_config keys: `policies_file` (a YAML/JSON policy file, read on every reconfigure) and/or
`config` (an inline RouterConfig mapping, which wins over the file); `policies_sha256` (added by
the application builder) changes with the file's content so that Serve sees a new user_config.

(It used to be a deployment of its own; one hop less measured faster: README, "Serving".)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clinie.analysis import NoteAnalysis
from clinie.ood import OODStats
from clinie.paths import repo_path
from router.config import PolicyConfigError, RouterConfig, fallback_config, load_router_config, parse_router_config
from router.policies import Decision
from router.router import LoadState, Router
from router.signals import NoteSignals, compute_signals

log = logging.getLogger(__name__)

USER_CONFIG_KEYS = ("config", "policies_file", "policies_sha256")


class RouterHost:
    """`route(analysis, policy, load, deadline_ms)` -> (Decision, note-level signals, sentences)."""

    def __init__(self, ood_stats: str | Path | None = None, router: Router | None = None):
        self.ood = OODStats.load_if_present(ood_stats)
        self.router = router or Router(fallback_config())
        self.last_error = ""
        self.source = "built-in fallback"

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        try:
            if user_config.get("config"):
                cfg: RouterConfig = parse_router_config(user_config["config"])
                source = "user_config.config"
            elif user_config.get("policies_file"):
                # relative to the repository: a replica's working directory is Ray's
                cfg = load_router_config(repo_path(user_config["policies_file"]))
                source = Path(user_config["policies_file"]).name  # shown in /readyz: a name, not a path
            else:
                cfg, source = fallback_config(), "built-in fallback"
            self.router.reconfigure(cfg)
            self.source, self.last_error = source, ""
            log.info("router policies loaded from %s: %s", source, ", ".join(self.router.known))
        except PolicyConfigError as exc:
            # Refuse, keep serving with the running policies, and make the refusal visible.
            self.last_error = str(exc)
            log.error("router policy update refused (running policies kept): %s", exc)

    def known(self) -> list[str]:
        return self.router.known

    def status(self) -> dict[str, Any]:
        return {
            "policies": self.router.known,
            "default_policy": self.router.config.default_policy,
            "source": self.source,
            "last_error": self.last_error,
            "ood_stats": self.ood is not None,
            "models": self.router.model_check(),
            **self.router.rates(),
        }

    def needs_fast_pass(self, policy: str | None) -> bool:
        return self.router.needs_fast_pass(policy)

    def route(
        self, note: NoteAnalysis | str, policy: str | None, load: LoadState, deadline_ms: float | None
    ) -> tuple[Decision, dict[str, float], list[tuple[int, int]]]:
        """The decision, the note-level signals (for `route.signals`) and the sentence ranges.

        `note` is the fast tier's analysis, or the bare text for a policy that does not need the
        fast pass (`needs_fast_pass`)."""
        signals = NoteSignals.unanalysed(note) if isinstance(note, str) else compute_signals(note, self.ood)
        decision = self.router.decide(signals, policy, load, deadline_ms)
        return decision, signals.note, signals.sentences

    def cost_model(self) -> dict[str, float]:
        return self.router.config.costs.model_dump()
