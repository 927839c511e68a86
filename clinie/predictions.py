"""Predictions (result JSONL, as `clinie extract` writes it) read back and scored against gold.

What `clinie evaluate` and the calibration read: a line per note, keyed by `note_id`; error lines
and unreadable lines are counted, not fatal, and so are spans or relations that do not fit the
schema or the note.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clinie.brat import Document, GoldRelation, GoldSpan
from clinie.schema import ENTITY_TYPES, MODIFIER_TYPES
from clinie.scoring import score_documents


def load_predictions(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Prediction lines by note_id; returns (predictions, lines skipped as unreadable or errors)."""
    preds: dict[str, dict[str, Any]] = {}
    skipped = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(obj, dict) or "error" in obj or obj.get("note_id") is None:
                skipped += 1
                continue
            preds[str(obj["note_id"])] = obj
    return preds, skipped


def _spans(text: str, obj: dict[str, Any]) -> tuple[list[GoldSpan], int]:
    spans, dropped = [], 0
    for group, labels in (("entities", ENTITY_TYPES), ("modifiers", MODIFIER_TYPES)):
        for s in obj.get(group) or []:
            try:
                span = GoldSpan(id=str(s["id"]), label=s["type"], start=int(s["start"]), end=int(s["end"]))
            except (KeyError, TypeError, ValueError):
                dropped += 1
                continue
            if span.label not in labels or not 0 <= span.start < span.end <= len(text):
                dropped += 1
                continue
            spans.append(span)
    return spans, dropped


def prediction_document(name: str, text: str, obj: dict[str, Any]) -> tuple[Document, int]:
    """A prediction line as a Document; returns (document, spans or relations dropped as invalid)."""
    spans, dropped = _spans(text, obj)
    ids = {s.id for s in spans}
    rels = []
    for r in obj.get("relations") or []:
        if isinstance(r, dict) and r.get("entity") in ids and r.get("modifier") in ids:
            rels.append(GoldRelation(entity=r["entity"], modifier=r["modifier"]))
        else:
            dropped += 1
    return Document(name=name, text=text, spans=spans, relations=rels), dropped


def evaluate_predictions(gold: list[Document], pred_path: Path) -> dict[str, Any]:
    """Scores of the predictions in `pred_path` against `gold`, with what could not be scored."""
    preds, skipped = load_predictions(pred_path)
    docs, dropped = {}, 0
    for g in gold:
        if g.name in preds:
            docs[g.name], d = prediction_document(g.name, g.text, preds[g.name])
            dropped += d
    return {
        **score_documents(gold, docs).as_dict(),
        "notes": len(gold),
        "predicted_notes": len(docs),
        "missing_predictions": sorted(g.name for g in gold if g.name not in docs),
        "unknown_predictions": sorted(set(preds) - {g.name for g in gold}),
        "skipped_prediction_lines": skipped,
        "dropped_invalid_items": dropped,
    }
