"""The policy interface: one method to implement (`decide`), one name to register (`@register`).

A policy sees a note's signals (and, through the router, nothing else it could block on) and
returns a `Decision`. Load and budget guards that every escalation must pass live in the router,
not in each policy, so a new policy cannot forget them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from router.signals import SIGNALS, NoteSignals


def check_sentence_signal(name: str) -> str:
    """`name` if it is a per-sentence signal (what sentence-level policies compare); otherwise a
    ValueError that lists the known ones (pydantic validators of policy configs call this)."""
    if name not in SIGNALS or SIGNALS[name].scope != "sentence":
        known = sorted(k for k, s in SIGNALS.items() if s.scope == "sentence")
        raise ValueError(f"unknown sentence signal {name!r}; known: {', '.join(known)}")
    return name


class CostModel(BaseModel):
    """What a routing decision costs, in the user's own units (dollars, GPU-seconds, credits)."""

    model_config = ConfigDict(extra="forbid")

    llm_cost_per_token: float = Field(default=1.0, ge=0, description="Cost of one LLM token (prompt or output).")
    fast_cost_per_call: float = Field(default=0.0, ge=0, description="Cost of one fast-tier pass over a note.")
    chars_per_token: float = Field(default=4.0, gt=0, description="Characters per LLM token, for estimates.")
    llm_tokens_per_sentence: float = Field(
        default=350.0,
        ge=0,
        description="Fixed LLM tokens per escalated sentence (instructions, one-shot example, markup), "
        "on top of three times the sentence's own tokens (prompt, rewritten answer, modifier step).",
    )

    def llm_tokens(self, sentence_chars: list[int]) -> float:
        """Estimated LLM tokens to extract sentences of these lengths."""
        return sum(self.llm_tokens_per_sentence + 3 * c / self.chars_per_token for c in sentence_chars)


class Decision(BaseModel):
    """What to do with one note."""

    action: Literal["fast", "note", "sentences"] = Field(
        description="`fast`: the fast tier's answer stands; `note`: the LLM tier answers the whole note; "
        "`sentences`: the LLM tier answers the listed sentences and the results are merged."
    )
    sentences: list[int] = Field(default_factory=list, description="Sentence indexes to escalate (`sentences`).")
    reason: str = Field(description="Why, for `route.reason`.")
    llm_tokens: float = Field(default=0.0, ge=0, description="Estimated LLM tokens this decision spends.")

    @property
    def escalates(self) -> bool:
        return self.action != "fast"


@dataclass
class RouteContext:
    """What a policy decides on."""

    signals: NoteSignals
    costs: CostModel
    # Why the LLM tier cannot take work right now (`llm_overloaded`, ...), or None. The router
    # turns any escalation into a fast answer with this reason; policies that spend on
    # escalation (budget) must not spend for one that will not happen.
    llm_blocked: str | None = None
    # Whether the running tiers are the ones the configuration's `calibrated_for` names (the
    # router sets it from `Router.set_running_models`). False when unknown: a policy acting on
    # measured gains must not trust a measurement of other models.
    models_match: bool = False
    # Time left for this note (ms; None: no deadline) and the LLM tier's expected latency for an
    # escalation (its recent p50 times the configured headroom; None: not measured yet).
    deadline_ms: float | None = None
    llm_expected_ms: float | None = None

    def all_sentences(self) -> list[int]:
        return list(range(len(self.signals.sentences)))

    def escalate(self, sentences: list[int], reason: str, whole_note: bool = False) -> Decision:
        """A decision sending `sentences` (or the whole note) to the LLM tier, with its token estimate."""
        chars = self.signals.sentence_chars
        chosen = self.all_sentences() if whole_note else sorted(sentences)
        tokens = self.costs.llm_tokens([chars[i] for i in chosen])
        return Decision(
            action="note" if whole_note else "sentences",
            sentences=[] if whole_note else chosen,
            reason=reason,
            llm_tokens=tokens,
        )


class PolicyConfig(BaseModel):
    """Base of every policy's configuration; `kind` names the registered implementation."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="Registered policy kind (`threshold`, `budget`, ...).")


class Policy(ABC):
    """A routing policy. Subclasses set `Config` and implement `decide`."""

    Config: ClassVar[type[PolicyConfig]] = PolicyConfig
    # Whether the policy decides on the fast tier's analysis. One that does not (llm-only) lets
    # the orchestration send the note straight to the LLM tier and run the fast pass only as the
    # fallback when the LLM tier cannot answer.
    needs_fast_pass: ClassVar[bool] = True

    def __init__(self, name: str, config: PolicyConfig, resolve: Callable[[str], Policy]):
        self.name = name
        self.config = config
        self._resolve = resolve  # other configured policies, by name (for wrappers such as budget)

    @abstractmethod
    def decide(self, ctx: RouteContext) -> Decision:
        """The routing decision for one note."""


REGISTRY: dict[str, type[Policy]] = {}


def register(kind: str) -> Callable[[type[Policy]], type[Policy]]:
    """Class decorator: make a policy implementation available as `kind` in policy files."""

    def add(cls: type[Policy]) -> type[Policy]:
        if kind in REGISTRY:
            raise ValueError(f"policy kind {kind!r} is already registered")
        REGISTRY[kind] = cls
        return cls

    return add
