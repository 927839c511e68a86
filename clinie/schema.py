"""The extraction schema (../shared/spec/extraction-schema.md) and the result wire types.

Everything here is plain pydantic: the core imports no Ray and no model library, so any layer
(tiers, router, server, CLI, benchmarks) can use it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

EntityType = Literal["problem", "treatment", "drug", "test"]
ModifierType = Literal[
    "negation",
    "temporal",
    "severity",
    "condition",
    "uncertain",
    "subject",
    "bodyloc",
    "course",
    "strength",
    "dosage",
    "duration",
    "form",
    "frequency",
    "route",
    "labvalue",
    "reference_range",
]


ENTITY_TYPES: tuple[str, ...] = get_args(EntityType)
MODIFIER_TYPES: tuple[str, ...] = get_args(ModifierType)

# The 22 allowed (entity, modifier) pairs of the schema; any other relation is invalid output.
ALLOWED_MODIFIERS: dict[str, tuple[str, ...]] = {
    "problem": (
        "negation",
        "temporal",
        "severity",
        "condition",
        "uncertain",
        "subject",
        "bodyloc",
        "course",
    ),
    "treatment": ("negation", "temporal"),
    "drug": (
        "negation",
        "temporal",
        "strength",
        "dosage",
        "duration",
        "form",
        "frequency",
        "route",
    ),
    "test": ("negation", "temporal", "labvalue", "reference_range"),
}
ALLOWED_PAIRS: frozenset[tuple[str, str]] = frozenset((e, m) for e, mods in ALLOWED_MODIFIERS.items() for m in mods)
RELATION_TYPE = "hasAttr"
# brat files in the corpus also carry a few `hasTemporal` lines; the schema treats them as hasAttr.
RELATION_ALIASES: dict[str, str] = {"hasAttr": RELATION_TYPE, "hasTemporal": RELATION_TYPE}


def is_allowed_pair(entity_type: str, modifier_type: str) -> bool:
    """True when the schema lets `modifier_type` attach to `entity_type`."""
    return (entity_type, modifier_type) in ALLOWED_PAIRS


def kind_of(label: str) -> Literal["entity", "modifier"]:
    """Whether a span label is an entity or a modifier; raises ValueError on unknown labels."""
    if label in ENTITY_TYPES:
        return "entity"
    if label in MODIFIER_TYPES:
        return "modifier"
    raise ValueError(f"unknown span label {label!r}")


class _Span(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Span id, unique within one result (`T1`, `T2`, ...).")
    type: str = Field(description="Span label (narrowed by each subclass).")
    start: int = Field(ge=0, description="Start offset, inclusive, in Python str code points.")
    end: int = Field(ge=0, description="End offset, exclusive; `text == note[start:end]`.")
    text: str = Field(description="The covered text, exactly `note[start:end]`.")
    confidence: float = Field(ge=0.0, le=1.0, description="Model confidence in this span, 0..1.")

    @model_validator(mode="after")
    def _check_extent(self) -> _Span:
        if self.end <= self.start:
            raise ValueError(f"span {self.id}: end {self.end} must be greater than start {self.start}")
        if len(self.text) != self.end - self.start:
            raise ValueError(f"span {self.id}: text length does not match its offsets")
        return self


class EntitySpan(_Span):
    """A main entity: problem, treatment, drug or test."""

    type: EntityType = Field(description="Entity label.")


class ModifierSpan(_Span):
    """A modifier of an entity (negation, severity, dose, route, lab value, ...)."""

    type: ModifierType = Field(description="Modifier label.")


class Relation(BaseModel):
    """`hasAttr` from an entity to one of its modifiers."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hasAttr"] = Field(default="hasAttr", description="Relation label; always hasAttr.")
    entity: str = Field(description="Id of the entity span (Arg1).")
    modifier: str = Field(description="Id of the modifier span (Arg2).")
    confidence: float = Field(ge=0.0, le=1.0, description="Model confidence in this relation, 0..1.")


class TextRange(BaseModel):
    """A stretch of the note, `[start, end)` in code points."""

    model_config = ConfigDict(extra="forbid")

    start: int = Field(ge=0, description="Start offset, inclusive.")
    end: int = Field(ge=0, description="End offset, exclusive.")

    @model_validator(mode="after")
    def _ordered(self) -> TextRange:
        if self.end < self.start:
            raise ValueError(f"range end {self.end} is before its start {self.start}")
        return self


class Route(BaseModel):
    """Who answered and why."""

    tier: str = Field(description="`bert`, `llm`, or `bert+llm` for a merge of both.")
    escalated: bool = Field(description="Whether any part of the note went to the LLM tier.")
    reason: str = Field(description="Why, in words a person can read (`confident`, `policy:fast-only`, ...).")
    signals: dict[str, float] = Field(default_factory=dict, description="Router signals, by name.")
    escalated_ranges: list[TextRange] = Field(
        default_factory=list,
        description="The parts of the note the LLM tier answered: its escalated sentences, or the whole "
        "note when the note went; empty when nothing went (an extension of the contract's route).",
    )


class NoteResult(BaseModel):
    """The result of one note, the same over HTTP, gRPC and the CLI (service-contract.md)."""

    model_config = ConfigDict(extra="forbid")

    note_id: str | None = Field(default=None, description="The caller's note id, echoed back.")
    entities: list[EntitySpan] = Field(default_factory=list, description="Entity spans.")
    modifiers: list[ModifierSpan] = Field(default_factory=list, description="Modifier spans.")
    relations: list[Relation] = Field(default_factory=list, description="Entity-modifier relations.")
    route: Route = Field(description="Routing decision for this note.")
    models: dict[str, str] = Field(default_factory=dict, description="Model `name@version` by tier.")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Milliseconds by stage.")

    @model_validator(mode="after")
    def _check_relations(self) -> NoteResult:
        entities = {e.id: e for e in self.entities}
        modifiers = {m.id: m for m in self.modifiers}
        if len(entities) + len(modifiers) != len(self.entities) + len(self.modifiers) or (
            entities.keys() & modifiers.keys()
        ):
            raise ValueError("span ids must be unique within a result")
        for rel in self.relations:
            ent, mod = entities.get(rel.entity), modifiers.get(rel.modifier)
            if ent is None or mod is None:
                raise ValueError(f"relation {rel.entity}->{rel.modifier} points at a missing span")
            if not is_allowed_pair(ent.type, mod.type):
                raise ValueError(f"relation {ent.type}->{mod.type} is not an allowed pair")
        return self

    def check_offsets(self, text: str) -> None:
        """Raise ValueError unless every span's text is exactly `text[start:end]`."""
        for span in [*self.entities, *self.modifiers]:
            if text[span.start : span.end] != span.text:
                raise ValueError(f"span {span.id} text does not match the note at {span.start}:{span.end}")


class ErrorBody(BaseModel):
    """`{"code", "message"}` of an error answer."""

    code: str = Field(description="Machine-readable error code, e.g. `empty_text`.")
    message: str = Field(description="What is wrong, for a person; never contains note text.")


class NoteError(BaseModel):
    """The slot of a note that failed, in a batch or in CLI output."""

    note_id: str | None = Field(default=None, description="The caller's note id, echoed back.")
    error: ErrorBody = Field(description="What went wrong.")


def result_json(result: NoteResult | NoteError) -> dict[str, Any]:
    """The wire JSON of a result: nulls dropped from error slots, everything else as declared."""
    return result.model_dump(mode="json")
