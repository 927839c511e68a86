"""What one fast-tier pass knows about a note: the hand-off between the fast tier and the router.

Plain dataclasses over numpy arrays (no model library): the fast tier fills a `NoteAnalysis`, the
router computes its signals from it, and the application turns it into a result. It is pickled
between Ray Serve deployments, so it holds no handles and no sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clinie.schema import EntitySpan, ModifierSpan, NoteResult, Relation, Route
from clinie.windows import Sentence


@dataclass
class DecodedSpan:
    """A span decoded from tags, with its token range and token-probability statistics."""

    label: str
    start: int
    end: int
    token_start: int
    token_end: int
    # What results report: the calibrated probability that the span is right when the model has a
    # calibrator (clinie.calibration), otherwise the raw score below.
    confidence: float
    min_prob: float  # lowest probability of the chosen tag over the span's tokens
    # Raw score: mean probability of the chosen tag over the span's tokens; None means `confidence`
    # is still the raw score (no calibrator applied).
    raw_confidence: float | None = None


@dataclass
class NoteAnalysis:
    """One fast-tier pass over one note: decoded spans plus the raw per-token evidence."""

    note_id: str | None
    text: str
    sentences: list[Sentence]
    entities: list[DecodedSpan]
    modifiers: list[DecodedSpan]
    # (entity index, modifier index, confidence): calibrated like spans; the raw probability that
    # decided the pair is the one in pair_probs
    relations: list[tuple[int, int, float]]
    token_offsets: list[tuple[int, int]]
    entity_probs: np.ndarray  # [tokens, entity tags]
    modifier_probs: np.ndarray  # [tokens, modifier tags]
    embedding: np.ndarray  # [hidden] mean of window embeddings, weighted by window length
    # every candidate pair with its raw relation probability (the decision is raw p >= threshold, so
    # the router's relation margin stays measured against the threshold that decides)
    pair_probs: list[tuple[int, int, float]] = field(default_factory=list)
    calibrated: bool = False  # whether span and relation confidences went through a calibrator
    # log-sum-exp of each token's tag logits (energy = -lse); None for models exported without it
    entity_lse: np.ndarray | None = None  # [tokens]
    modifier_lse: np.ndarray | None = None  # [tokens]
    model_tag: str = ""
    elapsed_ms: float = 0.0


def analysis_to_result(a: NoteAnalysis, route: Route) -> NoteResult:
    """Contract-shaped result with ids T1.. (entities first, then modifiers, each by offset)."""

    def spans(cls: type[EntitySpan] | type[ModifierSpan], decoded: list[DecodedSpan], first: int) -> list:
        return [
            cls(
                id=f"T{first + i}",
                type=s.label,
                start=s.start,
                end=s.end,
                text=a.text[s.start : s.end],
                confidence=round(s.confidence, 4),
            )
            for i, s in enumerate(decoded)
        ]

    entities = spans(EntitySpan, a.entities, 1)
    modifiers = spans(ModifierSpan, a.modifiers, len(entities) + 1)
    relations = [
        Relation(entity=entities[e].id, modifier=modifiers[mi].id, confidence=round(p, 4)) for e, mi, p in a.relations
    ]
    return NoteResult(
        note_id=a.note_id,
        entities=entities,
        modifiers=modifiers,
        relations=relations,
        route=route,
        models={"bert": a.model_tag},
        timings_ms={"bert": round(a.elapsed_ms, 2), "total": round(a.elapsed_ms, 2)},
    )
