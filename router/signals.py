"""Uncertainty and out-of-distribution signals from one fast-tier pass (no second model run).

Every signal is computed per sentence and aggregated per note (the worst sentence, or the mean
for `mean_*`), except the OOD score, which is per note. `SIGNALS` documents each in one line and
says which direction is risky; policies and calibration use that direction, so a threshold is
always written in the signal's own units.

Token-level quantities combine the two tagger heads (entities, modifiers) by taking the less
certain head at each word-piece, because an error in either head is an error of the sentence.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from clinie.analysis import NoteAnalysis
from clinie.ood import OODStats


class SignalSpec(BaseModel):
    """What a signal means and which way is risky."""

    description: str = Field(description="One line: what the number is.")
    riskier: Literal["higher", "lower"] = Field(description="Which direction means the fast tier is less reliable.")
    scope: Literal["sentence", "note"] = Field(default="sentence", description="Finest level it is computed at.")


SIGNALS: dict[str, SignalSpec] = {
    "min_token_prob": SignalSpec(
        description="Lowest probability of the chosen tag over the word-pieces (less certain head).",
        riskier="lower",
    ),
    "mean_token_prob": SignalSpec(
        description="Mean probability of the chosen tag over the word-pieces (less certain head).",
        riskier="lower",
    ),
    "max_entropy": SignalSpec(
        description="Highest tag-distribution entropy (nats) of any word-piece.", riskier="higher"
    ),
    "mean_entropy": SignalSpec(
        description="Mean tag-distribution entropy (nats) over the word-pieces.", riskier="higher"
    ),
    "min_margin": SignalSpec(
        description="Smallest gap between the best and second-best tag probability of any word-piece.",
        riskier="lower",
    ),
    "max_energy": SignalSpec(
        description="Highest energy score (-logsumexp of tag logits) of any word-piece; absent for older exports.",
        riskier="higher",
    ),
    "min_span_confidence": SignalSpec(
        description="Lowest reported confidence of a decoded span: calibrated when the model has a "
        "confidence calibration, else the mean tag probability (1.0 with no span).",
        riskier="lower",
    ),
    "min_relation_margin": SignalSpec(
        description="Smallest |2p-1| of a candidate entity-modifier pair's relation probability (1.0 with none).",
        riskier="lower",
    ),
    "ood_mahalanobis": SignalSpec(
        description="Mahalanobis distance / sqrt(d) of the pooled note embedding from the training notes'.",
        riskier="higher",
        scope="note",
    ),
}


def risk(name: str, value: float) -> float:
    """The signal turned so that higher always means riskier (for ranking and thresholds)."""
    return value if SIGNALS[name].riskier == "higher" else -value


@dataclass
class NoteSignals:
    """Signals of one note: per sentence (aligned with `sentences`) and per note."""

    sentences: list[tuple[int, int]]  # character ranges
    sentence_chars: list[int]
    per_sentence: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [sentences]
    note: dict[str, float] = field(default_factory=dict)

    @classmethod
    def unanalysed(cls, text: str) -> NoteSignals:
        """A note the fast tier has not seen (its policy does not need the fast pass): one range,
        the whole note, and no signals; enough for the cost model and the load checks."""
        return cls(sentences=[(0, len(text))], sentence_chars=[len(text)])

    def sentence_risk(self, name: str) -> np.ndarray:
        values = self.per_sentence[name]
        return values if SIGNALS[name].riskier == "higher" else -values


def _token_signals(a: NoteAnalysis, sents: list[tuple[int, int]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each word-piece's sentence and its per-token evidence (the worse of the two heads)."""
    if not len(a.token_offsets):
        return np.zeros(0, np.int64), {}
    starts = np.fromiter((s for s, _ in a.token_offsets), np.int64, len(a.token_offsets))
    sent_starts = np.array([s for s, _ in sents], np.int64)
    tok_sent = np.clip(np.searchsorted(sent_starts, starts, side="right") - 1, 0, len(sents) - 1)
    ev = a.token_evidence()
    tok = {"prob": ev.prob, "entropy": ev.entropy, "margin": ev.margin}
    if ev.energy is not None:
        tok["energy"] = ev.energy
    return tok_sent, tok


class _PerSentence:
    """Reduces per-token values to per-sentence ones (vectorised over word-pieces)."""

    def __init__(self, tok_sent: np.ndarray, n: int):
        self.tok_sent, self.n = tok_sent, n
        self.counts = np.bincount(tok_sent, minlength=n).astype(np.float64)

    def __call__(self, values: np.ndarray, how: Literal["min", "max", "mean"], empty: float) -> np.ndarray:
        res = np.full(self.n, empty, np.float64)
        if how == "mean":
            sums = np.bincount(self.tok_sent, weights=values, minlength=self.n)
            np.divide(sums, self.counts, out=res, where=self.counts > 0)
        elif how == "min":
            np.minimum.at(res, self.tok_sent, values)
        else:
            np.maximum.at(res, self.tok_sent, values)
        return res


def _span_signals(a: NoteAnalysis, sents: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per sentence: the lowest span confidence and the lowest relation margin |2p-1|."""
    n = len(sents)
    sent_starts = [s for s, _ in sents]

    def sentence_of(offset: int) -> int:  # bisect on a list: numpy per call costs more than it saves
        return max(0, min(n - 1, bisect.bisect_right(sent_starts, offset) - 1))

    span_conf = np.ones(n)
    for s in [*a.entities, *a.modifiers]:
        i = sentence_of(s.start)
        span_conf[i] = min(span_conf[i], s.confidence)
    rel_margin = np.ones(n)
    for e, _m, p in a.pair_probs:
        i = sentence_of(a.entities[e].start)
        rel_margin[i] = min(rel_margin[i], abs(2 * p - 1))
    return {"min_span_confidence": span_conf, "min_relation_margin": rel_margin}


def compute_signals(a: NoteAnalysis, ood: OODStats | None = None) -> NoteSignals:
    """All signals of one analysed note; vectorised over word-pieces (well under a millisecond
    for a typical note)."""
    sents = [(s.start, s.end) for s in a.sentences] or [(0, len(a.text))]
    n = len(sents)
    out = NoteSignals(sentences=sents, sentence_chars=[e - s for s, e in sents])
    tok_sent, tok = _token_signals(a, sents)
    reduce = _PerSentence(tok_sent, n)
    ps = out.per_sentence
    if tok:
        ps["min_token_prob"] = reduce(tok["prob"], "min", 1.0)
        ps["mean_token_prob"] = reduce(tok["prob"], "mean", 1.0)
        ps["max_entropy"] = reduce(tok["entropy"], "max", 0.0)
        ps["mean_entropy"] = reduce(tok["entropy"], "mean", 0.0)
        ps["min_margin"] = reduce(tok["margin"], "min", 1.0)
        if "energy" in tok:
            # sentences without tokens get the note's lowest energy (most ordinary) as neutral value
            ps["max_energy"] = reduce(tok["energy"], "max", float(tok["energy"].min()))
    ps.update(_span_signals(a, sents))

    for name, values in ps.items():
        if name.startswith("mean_"):
            w = reduce.counts if reduce.counts.sum() else np.ones(n)
            out.note[name] = round(float(np.average(values, weights=w)), 4)
        elif SIGNALS[name].riskier == "lower":
            out.note[name] = round(float(values.min()), 4)
        else:
            out.note[name] = round(float(values.max()), 4)
    if ood is not None and a.embedding is not None and a.embedding.size == ood.mean.size:
        out.note["ood_mahalanobis"] = round(ood.score(a.embedding), 4)
    return out
