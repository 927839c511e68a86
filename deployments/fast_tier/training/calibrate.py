"""Fit the fast tier's confidence calibration on labelled notes it never trained on, and store it.

`clinie train` and the default model's build call `calibrate_model` with the dev split; a model
built before calibration existed gets it once on first use (`default.upgrade_model`). For any
other model directory (for example one trained with `--split all`), fit it on a labelled folder:

    python -m deployments.fast_tier.training.calibrate --model DIR [--data BRAT_DIR] [--notes dev|all]

Scores are collected from the engine with calibration switched off (the raw mean tag probability
of each span and the relation probability of each emitted relation), labelled by strict match
against gold, fitted per kind, and measured twice: in sample, and by cross-fitting over the notes
(fit on one fold, measure on the other) so the file states an honest held-out ECE.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clinie.analysis import DecodedSpan, NoteAnalysis
from clinie.brat import Document, read_corpus
from clinie.calibration import (
    CALIBRATION_FILE,
    KINDS,
    CalibrationMap,
    ConfidenceCalibration,
    FitReport,
    HeldOutECE,
    Kind,
    Method,
    expected_calibration_error,
)
from deployments.fast_tier.config import CARD_NAME, EngineConfig

if TYPE_CHECKING:
    from deployments.fast_tier.recipe import Recipe

log = logging.getLogger(__name__)
# Platt (temperature scaling with a bias) by default: on the default model's 20 dev notes it
# generalised better than isotonic regression (held-out span ECE 0.029 vs 0.050, 2-fold
# cross-fitting: each map fitted on ~1,200 spans); isotonic wins with thousands of notes' worth of
# predictions (0.007 vs 0.026 over 88 notes of the tests' tiny model) and is one option away.
DEFAULT_METHOD: Method = "platt"
# Below this many predictions of a kind, a fitted map is noise: the kind keeps its raw score.
MIN_SAMPLES = 30
# Isotonic regression has as many free values as the data allows and overfits a few dozen samples
# (measured: worse than raw on 50-span folds); below this many, the two-parameter Platt map is used.
ISOTONIC_MIN_SAMPLES = 300
FOLDS = 2


@dataclass
class NoteScores:
    """Raw scores of one note's predictions and whether each is correct (strict match), per kind."""

    name: str
    scores: dict[Kind, np.ndarray] = field(default_factory=dict)
    correct: dict[Kind, np.ndarray] = field(default_factory=dict)


def label_note(a: NoteAnalysis, doc: Document) -> NoteScores:
    """Pair every prediction's raw score with its strict correctness against `doc`'s gold."""
    gold_spans = {s.id: (s.label, s.start, s.end) for s in doc.spans}
    gold_keys = set(gold_spans.values())
    gold_rel = {(gold_spans[r.entity], gold_spans[r.modifier]) for r in doc.relations if r.entity in gold_spans}

    def key(s: DecodedSpan) -> tuple[str, int, int]:
        return (s.label, s.start, s.end)

    def raw(s: DecodedSpan) -> float:
        return s.raw_confidence if s.raw_confidence is not None else s.confidence

    out = NoteScores(doc.name)
    groups: tuple[tuple[Kind, list[DecodedSpan]], ...] = (("entity", a.entities), ("modifier", a.modifiers))
    for kind, spans in groups:
        out.scores[kind] = np.array([raw(s) for s in spans], np.float64)
        out.correct[kind] = np.array([key(s) in gold_keys for s in spans], np.float64)
    # Emitted relations only: their confidence is what callers read. The raw probability is the
    # one in pair_probs (a.relations carries the calibrated one when a calibrator was applied).
    raw_p = {(e, m): p for e, m, p in a.pair_probs}
    rel = [(raw_p.get((e, m), p), (key(a.entities[e]), key(a.modifiers[m])) in gold_rel) for e, m, p in a.relations]
    out.scores["relation"] = np.array([p for p, _ in rel], np.float64)
    out.correct["relation"] = np.array([c for _, c in rel], np.float64)
    return out


def collect_scores(model_dir: Path, docs: Sequence[Document], precision: str = "int8") -> list[NoteScores]:
    """Run the model uncalibrated on labelled notes and label its predictions."""
    from deployments.fast_tier.engine import FastTierEngine

    engine = FastTierEngine(EngineConfig(model_dir=model_dir, precision=precision, calibrate=False))  # type: ignore[arg-type]
    analyses = engine.analyze([(d.name, d.text) for d in docs], progress=True)
    return [label_note(a, d) for a, d in zip(analyses, docs, strict=True)]


def fit_map(scores: np.ndarray, correct: np.ndarray, method: Method) -> CalibrationMap:
    """`method`'s map, except isotonic on too few samples, which becomes Platt (the map records it)."""
    if method == "isotonic" and len(scores) < ISOTONIC_MIN_SAMPLES:
        method = "platt"
    return CalibrationMap.fit(scores, correct, method)


def pool(notes: Sequence[NoteScores], kind: Kind) -> tuple[np.ndarray, np.ndarray]:
    """All notes' scores and outcomes of one kind, concatenated."""
    if not notes:
        return np.zeros(0), np.zeros(0)
    return (
        np.concatenate([n.scores[kind] for n in notes]),
        np.concatenate([n.correct[kind] for n in notes]),
    )


def folds_of(notes: Sequence[NoteScores], folds: int = FOLDS) -> list[list[int]]:
    """Note indices of each fold: notes in name order dealt round-robin (whole notes, so a fold
    never shares a note with the data its calibrator was fitted on)."""
    order = sorted(range(len(notes)), key=lambda i: notes[i].name)
    return [order[f::folds] for f in range(folds)]


@dataclass
class CrossFit:
    """Held-out predictions of a cross-fit: raw and calibrated scores with outcomes, per kind; the
    report also has `span` (entities and modifiers pooled)."""

    raw: dict[Kind, np.ndarray] = field(default_factory=dict)
    calibrated: dict[Kind, np.ndarray] = field(default_factory=dict)
    correct: dict[Kind, np.ndarray] = field(default_factory=dict)
    report: dict[str, HeldOutECE] = field(default_factory=dict)


def _ece_row(raw: np.ndarray, cal: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """One held-out fold's entry of a report: samples, ECE before and after."""
    return {
        "samples": float(len(raw)),
        "before": round(expected_calibration_error(raw, y), 4),
        "after": round(expected_calibration_error(cal, y), 4),
    }


def _held_out_ece(raw: np.ndarray, cal: np.ndarray, y: np.ndarray, per_fold: list[dict[str, float]]) -> HeldOutECE:
    return HeldOutECE(
        samples=len(raw),
        before=round(expected_calibration_error(raw, y), 4),
        after=round(expected_calibration_error(cal, y), 4),
        per_fold=per_fold,
    )


def _held_out_folds(
    notes: Sequence[NoteScores], parts: list[list[int]], kind: Kind, method: Method
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per fold, in order: its raw scores of `kind`, calibrated by the map fitted on the other
    folds, and their outcomes; folds with nothing to calibrate or too little to fit on are left out."""
    held_out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for f, held in enumerate(parts):
        fit_notes = [notes[i] for g, part in enumerate(parts) if g != f for i in part]
        s_fit, y_fit = pool(fit_notes, kind)
        s_out, y_out = pool([notes[i] for i in held], kind)
        if len(s_fit) < MIN_SAMPLES or not len(s_out):
            continue
        held_out[f] = (s_out, fit_map(s_fit, y_fit, method)(s_out), y_out)
    return held_out


def _span_report(
    out: CrossFit, folds: int, by_fold: dict[tuple[Kind, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> HeldOutECE:
    """Entities and modifiers together: the "span confidence" a caller sees, whatever the kind."""
    raw = np.concatenate([out.raw["entity"], out.raw["modifier"]])
    cal = np.concatenate([out.calibrated["entity"], out.calibrated["modifier"]])
    y = np.concatenate([out.correct["entity"], out.correct["modifier"]])
    span_folds = []
    for f in range(folds):
        if ("entity", f) in by_fold and ("modifier", f) in by_fold:
            pairs = zip(by_fold[("entity", f)], by_fold[("modifier", f)], strict=True)
            r_f, c_f, y_f = (np.concatenate(z) for z in pairs)
            span_folds.append(_ece_row(r_f, c_f, y_f))
    return _held_out_ece(raw, cal, y, span_folds)


def cross_fit(notes: Sequence[NoteScores], method: Method = DEFAULT_METHOD, folds: int = FOLDS) -> CrossFit:
    """Fit on all folds but one, calibrate the held-out fold, for each fold in turn."""
    out = CrossFit()
    parts = folds_of(notes, folds)
    by_fold: dict[tuple[Kind, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for kind in KINDS:
        kind_folds = _held_out_folds(notes, parts, kind, method)
        if not kind_folds:
            continue
        by_fold.update({(kind, f): v for f, v in kind_folds.items()})
        out.raw[kind], out.calibrated[kind], out.correct[kind] = (
            np.concatenate([raw for raw, _, _ in kind_folds.values()]),
            np.concatenate([cal for _, cal, _ in kind_folds.values()]),
            np.concatenate([y for _, _, y in kind_folds.values()]),
        )
        per_fold = [_ece_row(*v) for v in kind_folds.values()]
        out.report[kind] = _held_out_ece(out.raw[kind], out.calibrated[kind], out.correct[kind], per_fold)
    if "entity" in out.report and "modifier" in out.report:
        out.report["span"] = _span_report(out, len(parts), by_fold)
    return out


def _apply(maps: dict[Kind, CalibrationMap], kind: Kind, scores: np.ndarray) -> np.ndarray:
    return maps[kind](scores) if kind in maps else scores


def fit_calibration(
    notes: Sequence[NoteScores],
    model_tag: str,
    source: str,
    method: Method = DEFAULT_METHOD,
    precision: str = "int8",
) -> ConfidenceCalibration:
    """The calibrator fitted on all `notes`, with its fitting report (in-sample and cross-fitted ECE)."""
    maps: dict[Kind, CalibrationMap] = {}
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for kind in KINDS:
        s, y = pool(notes, kind)
        before[kind] = round(expected_calibration_error(s, y), 4)
        if len(s) < MIN_SAMPLES:
            skipped[kind] = f"{len(s)} predictions, fewer than {MIN_SAMPLES}: raw scores kept"
            after[kind] = before[kind]
            continue
        maps[kind] = fit_map(s, y, method)
        after[kind] = round(expected_calibration_error(maps[kind](s), y), 4)
    s_span = np.concatenate([pool(notes, "entity")[0], pool(notes, "modifier")[0]])
    y_span = np.concatenate([pool(notes, "entity")[1], pool(notes, "modifier")[1]])
    c_span = np.concatenate(
        [_apply(maps, "entity", pool(notes, "entity")[0]), _apply(maps, "modifier", pool(notes, "modifier")[0])]
    )
    before["span"] = round(expected_calibration_error(s_span, y_span), 4)
    after["span"] = round(expected_calibration_error(c_span, y_span), 4)
    held_out = cross_fit(notes, method).report if len(notes) >= FOLDS else {}
    return ConfidenceCalibration(
        model=model_tag,
        method=method,
        maps=maps,
        fitted_on=FitReport(
            notes=sorted(n.name for n in notes),
            source=source,
            precision=precision,
            ece_before=before,
            ece_after_in_sample=after,
            held_out={k: v for k, v in held_out.items() if k in maps or k == "span"},
            skipped=skipped,
        ),
    )


def card_summary(cal: ConfidenceCalibration | None, reason: str = "") -> dict[str, object]:
    """What the model card says about calibration (the file has the details)."""
    if cal is None:
        return {"status": "uncalibrated", "reason": reason or "no labelled notes to fit on"}
    rep = cal.fitted_on
    return {
        "status": "calibrated",
        "file": CALIBRATION_FILE,
        "method": cal.method,
        "notes": len(rep.notes),
        "source": rep.source,
        "maps": {k: m.method for k, m in cal.maps.items()},  # isotonic falls back to platt on few samples
        "samples": {k: m.samples for k, m in cal.maps.items()},
        "ece_before": rep.ece_before,
        "ece_after_in_sample": rep.ece_after_in_sample,
        "ece_held_out": {k: {"before": v.before, "after": v.after} for k, v in rep.held_out.items()},
        "skipped": rep.skipped,
    }


def transfer_calibration(recipe: Recipe, model_dir: Path, model_tag: str) -> dict[str, object]:
    """Write the recipe's maps into `model_dir` as `model_tag`'s (a model of the same recipe trained
    on every note, which has no notes of its own to fit on); returns the model card's section."""
    cal = recipe.calibration_for(model_tag)
    cal.save(model_dir / CALIBRATION_FILE)
    return {**card_summary(cal), "transferred_from": recipe.model}


def calibrate_model(
    model_dir: Path,
    docs: Sequence[Document],
    source: str,
    method: Method = DEFAULT_METHOD,
    precision: str = "int8",
    update_card: bool = True,
) -> ConfidenceCalibration:
    """Fit on `docs`, write `confidence_calibration.json` into `model_dir` (and a summary into its
    model card), and return it."""
    from deployments.fast_tier.config import MANIFEST_NAME, ModelManifest

    manifest = ModelManifest.model_validate_json((model_dir / MANIFEST_NAME).read_text())
    notes = collect_scores(model_dir, docs, precision)
    cal = fit_calibration(notes, manifest.tag, source, method, precision)
    cal.save(model_dir / CALIBRATION_FILE)
    log.warning(
        "confidence calibration for %s fitted on %d notes (%s): ECE before %s, held out after %s",
        manifest.tag,
        len(docs),
        source,
        cal.fitted_on.ece_before,
        {k: v.after for k, v in cal.fitted_on.held_out.items()},
    )
    if update_card and (model_dir / CARD_NAME).exists():
        card_path = model_dir / CARD_NAME
        card = json.loads(card_path.read_text())
        card["confidence_calibration"] = card_summary(cal)
        tmp = card_path.with_name(card_path.name + ".tmp")
        tmp.write_text(json.dumps(card, indent=2))
        tmp.replace(card_path)
    return cal


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m deployments.fast_tier.training.calibrate",
        description="Fit a fast-tier model's confidence calibration on labelled notes it never trained on.",
    )
    p.add_argument("--model", required=True, help="Model directory (fast_tier.json, model_card.json).")
    p.add_argument("--data", help="brat folder of labelled notes (default: the model card's data dir).")
    p.add_argument(
        "--notes",
        choices=["dev", "all"],
        default="dev",
        help="`dev`: the model card's dev notes (never trained on); `all`: every note in --data "
        "(use only with notes the model did not train on).",
    )
    p.add_argument("--method", choices=["isotonic", "platt"], default=DEFAULT_METHOD)
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model_dir = Path(args.model)
    card = json.loads((model_dir / CARD_NAME).read_text()) if (model_dir / CARD_NAME).exists() else {}
    data = Path(args.data or card.get("data", {}).get("dir", ""))
    if not data.is_dir():
        p.error(f"labelled notes not found at {data!s}; pass --data")
    docs = read_corpus(data)
    if args.notes == "dev":
        names = set(card.get("data", {}).get("dev_notes", []))
        docs = [d for d in docs if d.name in names]
        if not docs:
            p.error("the model card lists no dev notes found in --data; use --notes all with held-out notes")
    trained = set(card.get("data", {}).get("train_notes", []))
    if trained & {d.name for d in docs}:
        p.error("some of these notes were used to train the model; calibrate on notes it never saw")
    source = f"{args.notes} notes of {data}"
    cal = calibrate_model(model_dir, docs, source, args.method, args.precision)  # type: ignore[arg-type]
    print(json.dumps(card_summary(cal), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
