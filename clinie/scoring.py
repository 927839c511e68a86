"""The scorer of extraction-schema.md: strict and relaxed, entities / modifiers / relations, per label.

- Strict span match: same label, same start and end.
- Relaxed span match: same label and overlapping ranges, one-to-one, greedy by longest overlap.
- Relation match: both its entity and its modifier are matched (under the same mode).
Scores are micro-averaged over all notes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from clinie.brat import Document, GoldSpan

Mode = Literal["strict", "relaxed"]
GROUPS = ("entities", "modifiers", "relations")


class PRF(BaseModel):
    """Counts and micro precision / recall / F1."""

    tp: int = Field(default=0, description="True positives.")
    fp: int = Field(default=0, description="False positives.")
    fn: int = Field(default=0, description="False negatives.")

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def match_spans(gold: Sequence[GoldSpan], pred: Sequence[GoldSpan], mode: Mode) -> dict[str, str]:
    """One-to-one matching of predicted to gold spans; returns {pred id: gold id}."""
    if mode == "strict":
        by_key: dict[tuple[str, int, int], list[str]] = {}
        for g in gold:
            by_key.setdefault((g.label, g.start, g.end), []).append(g.id)
        out: dict[str, str] = {}
        for p in pred:
            ids = by_key.get((p.label, p.start, p.end))
            if ids:
                out[p.id] = ids.pop(0)
        return out
    candidates: list[tuple[int, int, int, int]] = []
    for gi, g in enumerate(gold):
        for pi, p in enumerate(pred):
            if g.label != p.label:
                continue
            overlap = min(g.end, p.end) - max(g.start, p.start)
            if overlap > 0:
                # Longest overlap first; ties broken by closeness of extents, then by position.
                mismatch = abs(g.start - p.start) + abs(g.end - p.end)
                candidates.append((-overlap, mismatch, gi, pi))
    candidates.sort()
    used_g: set[int] = set()
    used_p: set[int] = set()
    out = {}
    for _, _, gi, pi in candidates:
        if gi in used_g or pi in used_p:
            continue
        used_g.add(gi)
        used_p.add(pi)
        out[pred[pi].id] = gold[gi].id
    return out


class Scores(BaseModel):
    """Per-mode, per-group counts, overall and by label."""

    overall: dict[str, dict[str, PRF]] = Field(default_factory=dict, description="mode -> group -> PRF")
    per_label: dict[str, dict[str, dict[str, PRF]]] = Field(
        default_factory=dict, description="mode -> group -> label -> PRF"
    )

    def add(self, mode: str, group: str, label: str, tp: int = 0, fp: int = 0, fn: int = 0) -> None:
        for bucket in (
            self.overall.setdefault(mode, {}).setdefault(group, PRF()),
            self.per_label.setdefault(mode, {}).setdefault(group, {}).setdefault(label, PRF()),
        ):
            bucket.tp += tp
            bucket.fp += fp
            bucket.fn += fn

    def f1(self, mode: Mode, group: str) -> float:
        return self.overall.get(mode, {}).get(group, PRF()).f1

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for mode in ("strict", "relaxed"):
            out[mode] = {
                group: {
                    "overall": self.overall.get(mode, {}).get(group, PRF()).as_dict(),
                    "per_label": {
                        label: prf.as_dict()
                        for label, prf in sorted(self.per_label.get(mode, {}).get(group, {}).items())
                    },
                }
                for group in GROUPS
            }
        return out


def _score_group(
    scores: Scores, mode: Mode, group: str, gold: Sequence[GoldSpan], pred: Sequence[GoldSpan]
) -> dict[str, str]:
    matched = match_spans(gold, pred, mode)
    matched_gold = set(matched.values())
    for p in pred:
        scores.add(mode, group, p.label, tp=1 if p.id in matched else 0, fp=0 if p.id in matched else 1)
    for g in gold:
        if g.id not in matched_gold:
            scores.add(mode, group, g.label, fn=1)
    return matched


def score_documents(gold_docs: Iterable[Document], pred_docs: dict[str, Document]) -> Scores:
    """Score predictions (by note name) against gold; a note with no prediction counts as empty."""
    scores = Scores()
    for gold in gold_docs:
        pred = pred_docs.get(gold.name) or Document(name=gold.name, text=gold.text)
        gold_label = {s.id: s.label for s in gold.spans}
        pred_label = {s.id: s.label for s in pred.spans}
        for mode in ("strict", "relaxed"):
            m_ent = _score_group(scores, mode, "entities", gold.entities, pred.entities)
            m_mod = _score_group(scores, mode, "modifiers", gold.modifiers, pred.modifiers)
            mapping = {**m_ent, **m_mod}
            gold_rels = Counter((r.entity, r.modifier) for r in gold.relations)
            for r in pred.relations:
                key = (mapping.get(r.entity), mapping.get(r.modifier))
                label = f"{pred_label.get(r.entity)}:{pred_label.get(r.modifier)}"
                if None not in key and gold_rels[key] > 0:  # type: ignore[index]
                    gold_rels[key] -= 1  # type: ignore[index]
                    scores.add(mode, "relations", label, tp=1)
                else:
                    scores.add(mode, "relations", label, fp=1)
            for (ge, gm), left in gold_rels.items():
                if left > 0:
                    label = f"{gold_label[ge]}:{gold_label[gm]}"
                    scores.add(mode, "relations", label, fn=left)
    return scores


class F1Change(BaseModel):
    """F1 of system B minus F1 of system A on the same notes, in points, with a paired bootstrap
    interval over the notes."""

    mode: Mode = Field(description="Span match mode.")
    group: str = Field(description="entities, modifiers or relations.")
    points: float = Field(description="F1(B) - F1(A) on all the notes, in F1 points (x100).")
    low: float = Field(description="Lower end of the interval, points.")
    high: float = Field(description="Upper end of the interval, points.")
    level: float = Field(gt=0, lt=1, description="Coverage of the interval (percentile bootstrap).")
    notes: int = Field(ge=1, description="Notes scored (the resampling unit).")
    resamples: int = Field(ge=1, description="Bootstrap resamples.")


def _note_counts(gold_docs: Sequence[Document], preds: dict[str, Document], mode: Mode, group: str) -> np.ndarray:
    """(notes, 3): tp, fp, fn of each note on its own."""
    rows = []
    for d in gold_docs:
        prf = score_documents([d], preds).overall.get(mode, {}).get(group, PRF())
        rows.append((prf.tp, prf.fp, prf.fn))
    return np.array(rows, dtype=np.float64).reshape(len(rows), 3)


def _micro_f1(counts: np.ndarray) -> np.ndarray:
    """Micro F1 from summed (..., 3) tp/fp/fn counts (0 where there is nothing to score)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def f1_change(
    gold_docs: Iterable[Document],
    pred_a: dict[str, Document],
    pred_b: dict[str, Document],
    mode: Mode,
    group: str,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> F1Change:
    """How F1 moves from A to B, and how far that move is from noise on this many notes.

    The notes are resampled with replacement and both systems are scored on each resample
    (paired: a note that is hard for A is hard for B too), micro-F1 as `score_documents`
    computes it. On 20 dev notes a quantized model's F1 moves by a few tenths of a point from
    one build to the next; the interval says whether a move is larger than the notes can
    resolve."""
    docs = list(gold_docs)
    if not docs:
        raise ValueError("no notes to compare on")
    a, b = _note_counts(docs, pred_a, mode, group), _note_counts(docs, pred_b, mode, group)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(docs), size=(resamples, len(docs)))
    diffs = 100 * (_micro_f1(b[idx].sum(axis=1)) - _micro_f1(a[idx].sum(axis=1)))
    tail = (1 - level) / 2
    return F1Change(
        mode=mode,
        group=group,
        points=round(float(100 * (_micro_f1(b.sum(axis=0)) - _micro_f1(a.sum(axis=0)))), 2),
        low=round(float(np.quantile(diffs, tail)), 2),
        high=round(float(np.quantile(diffs, 1 - tail)), 2),
        level=level,
        notes=len(docs),
        resamples=resamples,
    )


def format_table(report: dict[str, object]) -> str:
    """A people-readable table of `Scores.as_dict()` (overall rows, then per-label rows)."""
    lines = [f"{'mode':8} {'group':10} {'label':26} {'P':>7} {'R':>7} {'F1':>7} {'tp':>6} {'fp':>6} {'fn':>6}"]
    for mode in ("strict", "relaxed"):
        by_group = report[mode]
        assert isinstance(by_group, dict)
        for group in GROUPS:
            rows = [("ALL", by_group[group]["overall"]), *list(by_group[group]["per_label"].items())]
            for label, prf in rows:
                lines.append(
                    f"{mode:8} {group:10} {label:26} {prf['precision']:7.4f} {prf['recall']:7.4f} "
                    f"{prf['f1']:7.4f} {prf['tp']:6d} {prf['fp']:6d} {prf['fn']:6d}"
                )
    return "\n".join(lines)
