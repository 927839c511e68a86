"""Errors that cross the line between the tiers and the application.

They live in the core so that the ingress can tell a bad note or a slow LLM tier apart without
importing either tier (and the tokenizers or engines behind them). Messages never quote a note.
"""

from __future__ import annotations


class InputError(ValueError):
    """A note that is refused, with a machine-readable code (the wire's `error.code`)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class LLMTimeout(TimeoutError):
    """A note's extraction missed its deadline; the engine's requests for it were aborted."""


class LLMUnavailable(RuntimeError):
    """The LLM tier is not ready (starting or failed); the caller answers from the fast tier."""
