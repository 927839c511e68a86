"""What one fast-tier pass knows about a note: the hand-off between the fast tier and the router.

Plain dataclasses over numpy arrays (no model library): the fast tier fills a `NoteAnalysis`, the
router computes its signals from it, and the application turns it into a result. It is pickled
between Ray Serve deployments, so it holds no handles and no sessions; `compact()` is the form that
travels (the router reads per-token evidence, not the [tokens, tags] probability matrices).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
class TokenEvidence:
    """Per word-piece, the less certain of the two tagging heads: what the router's token signals
    reduce to sentences (router/signals.py)."""

    prob: np.ndarray  # [tokens] probability of the best tag
    entropy: np.ndarray  # [tokens] entropy of the tag distribution
    margin: np.ndarray  # [tokens] best minus second-best probability
    energy: np.ndarray | None = None  # [tokens] -logsumexp of the tag logits; None without it


def _head_stats(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token: probability of the best tag, entropy, best-minus-second margin."""
    if probs.shape[1] < 2:
        ones = np.ones(len(probs), np.float32)
        return ones, np.zeros(len(probs), np.float32), ones
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    ent = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(1)
    return top2[:, 1], ent, top2[:, 1] - top2[:, 0]


def token_evidence(
    entity_probs: np.ndarray,
    modifier_probs: np.ndarray,
    entity_lse: np.ndarray | None = None,
    modifier_lse: np.ndarray | None = None,
) -> TokenEvidence:
    """The worse of the two heads per token: lowest top probability, highest entropy, lowest
    margin, highest energy."""
    pe, he, me = _head_stats(entity_probs)
    pm, hm, mm = _head_stats(modifier_probs)
    energy = None
    if entity_lse is not None and modifier_lse is not None:
        energy = np.maximum(-entity_lse, -modifier_lse)
    return TokenEvidence(np.minimum(pe, pm), np.maximum(he, hm), np.minimum(me, mm), energy)


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
    # [tokens, tags]; None in a compact() analysis, which carries `evidence` instead
    entity_probs: np.ndarray | None
    modifier_probs: np.ndarray | None
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
    evidence: TokenEvidence | None = None  # set by compact(); otherwise derived (token_evidence())

    def token_evidence(self) -> TokenEvidence:
        """Per-token evidence for the router: carried by a compact() analysis, otherwise computed
        from the probabilities (not stored: they stay the one source of truth)."""
        if self.evidence is not None:
            return self.evidence
        if self.entity_probs is None or self.modifier_probs is None:
            raise ValueError("an analysis without tag probabilities must carry its evidence")
        return token_evidence(self.entity_probs, self.modifier_probs, self.entity_lse, self.modifier_lse)

    def compact(self) -> NoteAnalysis:
        """The same analysis for another process: the per-token evidence instead of the [tokens,
        tags] probability matrices and logits, which the router reduces to it anyway (same signals,
        same routing). About a fifth of the pickled size: a typical analysis travels inside Ray's
        reply (under its 100 KB inline limit) instead of through the object store."""
        return replace(
            self,
            evidence=self.token_evidence(),
            entity_probs=None,
            modifier_probs=None,
            entity_lse=None,
            modifier_lse=None,
        )


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
