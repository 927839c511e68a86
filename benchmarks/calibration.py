"""Confidence calibration of the fast tier: ECE before/after and reliability diagrams, on dev notes.

The model card's dev notes (never trained on) are run once with calibration switched off; every
predicted span and emitted relation is labelled by strict match (same type, exact offsets; a
relation is right when both arguments match a gold relation's). The calibrator is then measured
on notes it was not fitted on, by 2-fold cross-fitting over the dev notes (fit on one half,
calibrate the other, and the reverse); Platt scaling (what ships by default) and isotonic
regression are compared. The shipped file's own in-sample numbers are listed too.

    python -m benchmarks.calibration [--model DIR] [--notes dev|unseen] [--output benchmarks/results/calibration.json]

`--notes unseen` uses every note of the model's data folder it did not train on (for a model
trained on a subset, such as the tests' tiny model, whose dev split is two notes).

Writes the JSON and two PNG reliability diagrams (spans: entities + modifiers; relations) beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fast_tier import dev_documents
from clinie.brat import Document, read_corpus
from clinie.calibration import ConfidenceCalibration, Method, expected_calibration_error, reliability_bins
from deployments.fast_tier.config import MANIFEST_NAME, ModelManifest
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.training.calibrate import DEFAULT_METHOD, FOLDS, CrossFit, collect_scores, cross_fit, pool

METHODS: tuple[Method, ...] = ("isotonic", "platt")


def _groups(fit: CrossFit) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(raw, calibrated, correct) of spans (entities + modifiers pooled) and of relations."""
    out = {}
    span_kinds = [k for k in ("entity", "modifier") if k in fit.raw]
    if span_kinds:
        out["spans"] = tuple(
            np.concatenate([getattr(fit, part)[k] for k in span_kinds]) for part in ("raw", "calibrated", "correct")
        )
    if "relation" in fit.raw:
        out["relations"] = (fit.raw["relation"], fit.calibrated["relation"], fit.correct["relation"])
    return out  # type: ignore[return-value]


def _bins(conf: np.ndarray, correct: np.ndarray) -> list[dict[str, Any]]:
    return [
        {
            "bin": f"{b.lo:.1f}-{b.hi:.1f}",
            "n": b.count,
            "confidence": None if b.mean_confidence is None else round(b.mean_confidence, 3),
            "accuracy": None if b.accuracy is None else round(b.accuracy, 3),
        }
        for b in reliability_bins(conf, correct)
    ]


def plot_reliability(path: Path, title: str, raw: np.ndarray, cal: np.ndarray, correct: np.ndarray) -> None:
    """Two panels (raw, calibrated): accuracy per confidence bin against the diagonal, with the
    share of predictions in each bin underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, 2, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    for col, (name, conf) in enumerate((("raw (uncalibrated)", raw), ("calibrated (held out)", cal))):
        bins = reliability_bins(conf, correct)
        centers = np.array([(b.lo + b.hi) / 2 for b in bins])
        acc = np.array([b.accuracy if b.accuracy is not None else np.nan for b in bins])
        mean_conf = np.array([b.mean_confidence if b.mean_confidence is not None else np.nan for b in bins])
        top, bottom = axes[0, col], axes[1, col]
        top.bar(centers, acc, width=0.1, edgecolor="black", color="#4c72b0", label="accuracy (strict)")
        top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        # A bar below its marker: reported confidence higher than the share correct (overconfident).
        top.plot(centers, mean_conf, "_", markersize=22, mew=3, color="#c44e52", label="mean reported confidence")
        ece = expected_calibration_error(conf, correct)
        top.set_title(f"{name}: ECE {ece:.3f} (n={len(conf)})")
        top.set_ylim(0, 1)
        top.set_ylabel("share correct")
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centers, [b.count / max(len(conf), 1) for b in bins], width=0.1, color="#8c8c8c")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("reported confidence")
        bottom.set_ylabel("share")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def unseen_documents(model_dir: Path) -> list[Document]:
    """Every note of the model's data folder that it did not train on."""
    card = json.loads((model_dir / "model_card.json").read_text())
    trained = set(card["data"]["train_notes"])
    return [d for d in read_corpus(card["data"]["dir"]) if d.name not in trained]


def run(model_dir: Path, output: Path, which: str = "dev") -> dict[str, Any]:
    docs = dev_documents(model_dir) if which == "dev" else unseen_documents(model_dir)
    manifest = ModelManifest.model_validate_json((model_dir / MANIFEST_NAME).read_text())
    notes = collect_scores(model_dir, docs, "int8")
    report: dict[str, Any] = {
        "model": manifest.tag,
        "notes": len(notes),
        "protocol": f"{FOLDS}-fold cross-fitting over the {which} notes (whole notes per fold), "
        "int8, strict match, 10 equal-width bins",
        "raw_all_dev": {},
        "held_out": {},
    }
    for kind in ("entity", "modifier", "relation"):
        s, y = pool(notes, kind)
        report["raw_all_dev"][kind] = {
            "n": len(s),
            "accuracy": round(float(y.mean()), 4) if len(y) else None,
            "ece": round(expected_calibration_error(s, y), 4),
        }
    output.parent.mkdir(parents=True, exist_ok=True)
    for method in METHODS:
        fit = cross_fit(notes, method)
        rows = {k: v.model_dump() for k, v in fit.report.items()}
        for group, (raw, cal, y) in _groups(fit).items():
            rows[group] = {
                "per_fold": fit.report["span" if group == "spans" else "relation"].per_fold,
                "samples": len(raw),
                "before": round(expected_calibration_error(raw, y), 4),
                "after": round(expected_calibration_error(cal, y), 4),
                "bins_before": _bins(raw, y),
                "bins_after": _bins(cal, y),
            }
            if method == DEFAULT_METHOD:
                png = output.with_name(f"calibration_{group}.png")
                title = f"{manifest.tag}: {group}, {len(notes)} {which} notes, {method} ({FOLDS}-fold held out)"
                plot_reliability(png, title, raw, cal, y)
                rows[group]["diagram"] = str(png)
        report["held_out"][method] = rows
    shipped = ConfidenceCalibration.for_model(model_dir, manifest.tag)
    report["shipped"] = shipped.fitted_on.model_dump() if shipped is not None else "no calibration file"
    output.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--model", help="Model directory (default: the embedded default's held-out model, trained on the train split)."
    )
    p.add_argument(
        "--notes",
        choices=["dev", "unseen"],
        default="dev",
        help="`dev`: the model card's dev split; `unseen`: every note of its data folder it did not train on.",
    )
    p.add_argument("--output", default="benchmarks/results/calibration.json")
    args = p.parse_args(argv)
    report = run(resolve_model_dir(args.model, held_out=True), Path(args.output), args.notes)
    table = [
        f"{method:9s} {group:9s} n={row['samples']:5d}  ECE {row['before']:.3f} -> {row['after']:.3f}  per fold: "
        + ", ".join(f"{f['before']:.3f} -> {f['after']:.3f} (n={f['samples']:.0f})" for f in row.get("per_fold", []))
        for method, rows in report["held_out"].items()
        for group, row in rows.items()
        if group in ("spans", "relations", "entity", "modifier")
    ]
    print("\n".join(table))
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
