"""The extraction pipeline as the CLI runs it in process (and the server will run it per request).

Policy names every build knows are resolved here. Until an LLM tier is configured, `default`
answers from the fast tier and says so in `route.reason` (`llm_tier_unavailable`), and `llm-only`
is refused with a clear error rather than silently answered by the fast tier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from clinie.inputs import NoteInput
from clinie.schema import NoteError, NoteResult, Route
from deployments.fast_tier.config import EngineConfig
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.engine import FastTierEngine, NoteAnalysis, confidence_signals

KNOWN_POLICIES: tuple[str, ...] = ("fast-only", "default", "llm-only")


class PolicyError(ValueError):
    """An unknown policy, or one this build cannot serve; `code` is the wire error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def policy_router(name: str, llm_available: bool = False) -> Callable[[NoteAnalysis], Route]:
    """The routing decision function of a named policy."""
    if name not in KNOWN_POLICIES:
        raise PolicyError("unknown_policy", f"unknown policy {name!r}; known policies: {', '.join(KNOWN_POLICIES)}")
    if name == "llm-only" and not llm_available:
        raise PolicyError("policy_unavailable", "policy 'llm-only' needs the LLM tier, which is not configured")
    reason = "policy:fast-only" if name == "fast-only" else "llm_tier_unavailable"

    def route(a: NoteAnalysis) -> Route:
        return Route(tier="bert", escalated=False, reason=reason, signals=confidence_signals(a))

    return route


class Pipeline:
    """Fast tier (+ policy) over notes, in process."""

    def __init__(self, model_dir: str | Path | None = None, precision: str = "int8", batch_size: int = 16):
        self.engine = FastTierEngine(
            EngineConfig(model_dir=resolve_model_dir(model_dir), precision=precision, batch_size=batch_size)  # type: ignore[arg-type]
        )

    def run(
        self, notes: Sequence[NoteInput], policy: str = "default", progress: bool = False
    ) -> list[NoteResult | NoteError]:
        route = policy_router(policy)
        readable = [(i, n) for i, n in enumerate(notes) if n.error is None]
        results = self.engine.extract([(n.note_id, n.text) for _, n in readable], progress=progress, route=route)
        slots: list[NoteResult | NoteError] = [
            NoteError(note_id=n.note_id, error=n.error) if n.error is not None else None  # type: ignore[misc]
            for n in notes
        ]
        for (i, _), r in zip(readable, results, strict=True):
            slots[i] = r
        return slots
