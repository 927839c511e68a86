"""Confidence calibration: a monotone map from a raw model score to the probability of being right.

The fast tier's raw span score (mean probability of the chosen tag) and relation probability are
overconfident: softmax outputs of a fine-tuned encoder are not frequencies. A calibrator is fitted
on labelled notes the model never trained on (the dev split) and stored with the model as
`confidence_calibration.json`; the engine applies it so that a span reported at 0.8 is right
about 80% of the time (strict match: same type, same offsets).

Two methods, numpy only (no scipy / scikit-learn in the serving image):
- `isotonic`: pool-adjacent-violators on (score, correct), predicted by linear interpolation
  between the fitted blocks' end points (as scikit-learn's IsotonicRegression does). Monotone,
  no shape assumption; needs a few hundred samples.
- `platt`: sigmoid(a * logit(score) + b) fitted by Newton's method on the log loss; `a` is an
  inverse temperature and `b` a bias, so it is temperature scaling with a shift. Smooth, two
  parameters, works with little data.

Both maps are non-decreasing (a higher raw score never gets a lower confidence), so thresholds and
rankings on confidence keep their order; outputs are in [0, 1].
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CALIBRATION_FILE = "confidence_calibration.json"
Kind = Literal["entity", "modifier", "relation"]
KINDS: tuple[Kind, ...] = ("entity", "modifier", "relation")
Method = Literal["isotonic", "platt"]
ECE_BINS = 10
# Scores are clipped away from 0 and 1 before the logit, so a saturated softmax stays finite.
_EPS = 1e-6


class CalibrationError(ValueError):
    """A calibration file that cannot be used (unreadable, malformed, or for another model)."""


# -- measures ---------------------------------------------------------------------------------


def _as_arrays(confidence: object, correct: object) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64).ravel()
    y = np.asarray(correct, dtype=np.float64).ravel()
    if c.shape != y.shape:
        raise ValueError(f"{c.size} confidences but {y.size} outcomes")
    return c, y


class ReliabilityBin(BaseModel):
    """One bin of a reliability diagram."""

    lo: float = Field(description="Lower edge of the confidence bin (inclusive).")
    hi: float = Field(description="Upper edge (exclusive; the last bin includes 1.0).")
    count: int = Field(ge=0, description="Predictions whose confidence falls in the bin.")
    mean_confidence: float | None = Field(description="Mean reported confidence in the bin (None if empty).")
    accuracy: float | None = Field(description="Share of those predictions that are correct (None if empty).")


def reliability_bins(confidence: object, correct: object, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]: count, mean confidence and accuracy of each."""
    c, y = _as_arrays(confidence, correct)
    idx = np.clip((c * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        out.append(
            ReliabilityBin(
                lo=b / bins,
                hi=(b + 1) / bins,
                count=n,
                mean_confidence=float(c[sel].mean()) if n else None,
                accuracy=float(y[sel].mean()) if n else None,
            )
        )
    return out


def expected_calibration_error(confidence: object, correct: object, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width bins of (share of predictions) * |accuracy - mean confidence|."""
    c, _ = _as_arrays(confidence, correct)
    if c.size == 0:
        return 0.0
    return float(
        sum(
            b.count / c.size * abs(b.accuracy - b.mean_confidence)
            for b in reliability_bins(confidence, correct, bins)
            if b.count and b.accuracy is not None and b.mean_confidence is not None
        )
    )


# -- fitting ----------------------------------------------------------------------------------


def fit_isotonic(scores: object, correct: object) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: the non-decreasing step function closest (least squares) to the
    outcomes. Returns breakpoints (x strictly increasing, y non-decreasing) for `np.interp`."""
    c, y = _as_arrays(scores, correct)
    if c.size == 0:
        raise ValueError("isotonic fit needs at least one sample")
    # Equal scores must get one value: pool them first (weight = how many there are).
    xs, inverse = np.unique(c, return_inverse=True)
    weights = np.bincount(inverse).astype(np.float64)
    sums = np.bincount(inverse, weights=y)
    # Stack of blocks: [mean, weight, first x index, last x index]; merge while order is violated.
    blocks: list[list[float]] = []
    for i in range(len(xs)):
        blocks.append([sums[i] / weights[i], weights[i], i, i])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, _, last = blocks.pop()
            m1, w1, first, _ = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, first, last])
    bx: list[float] = []
    by: list[float] = []
    for mean, _, first, last in blocks:
        # Both ends of a block keep its value: flat inside, linear between neighbouring blocks.
        for i in sorted({int(first), int(last)}):
            bx.append(float(xs[i]))
            by.append(float(min(max(mean, 0.0), 1.0)))
    return bx, by


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + exp(-z))


def _log_loss(x: np.ndarray, y: np.ndarray, a: float, b: float, ridge: float) -> float:
    z = a * x + b
    # log(1 + exp(z)) - y z, computed without overflow
    return float((np.logaddexp(0.0, z) - y * z).sum() + 0.5 * ridge * ((a - 1.0) ** 2 + b * b))


def fit_platt(scores: object, correct: object, iterations: int = 100) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit(score) + b): damped Newton on the log loss, with a tiny ridge
    so that separable data stays finite. The map must be monotone, so when the best slope is not
    positive (the score does not rank right above wrong) the fit is the constant base rate."""
    c, y = _as_arrays(scores, correct)
    if c.size == 0:
        raise ValueError("Platt fit needs at least one sample")
    x = _logit(c)
    a, b = 1.0, 0.0
    ridge = 1e-3
    loss = _log_loss(x, y, a, b, ridge)
    for _ in range(iterations):
        p = _sigmoid(a * x + b)
        w = p * (1 - p)
        g = np.array([((p - y) * x).sum() + ridge * (a - 1.0), (p - y).sum() + ridge * b])
        h = np.array([[(w * x * x).sum() + ridge, (w * x).sum()], [(w * x).sum(), w.sum() + ridge]])
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-6:  # halve the step until the loss goes down (plain Newton can overshoot)
            new = _log_loss(x, y, a - t * float(step[0]), b - t * float(step[1]), ridge)
            if new <= loss:
                break
            t /= 2
        a, b, loss = a - t * float(step[0]), b - t * float(step[1]), new
        if t * np.abs(step).max() < 1e-9:
            break
    if a <= 1e-6:
        rate = float(np.clip(y.mean(), _EPS, 1 - _EPS))
        return 1e-6, math.log(rate / (1 - rate))
    return a, b


# -- stored maps --------------------------------------------------------------------------------


class CalibrationMap(BaseModel):
    """A fitted monotone map of one kind of score (entity spans, modifier spans or relations)."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field(description="`isotonic` (x/y breakpoints) or `platt` (a, b).")
    x: list[float] = Field(default_factory=list, description="Isotonic: raw-score breakpoints, increasing.")
    y: list[float] = Field(default_factory=list, description="Isotonic: calibrated value at each breakpoint.")
    a: float | None = Field(default=None, description="Platt: slope on logit(score) (an inverse temperature).")
    b: float | None = Field(default=None, description="Platt: bias on the logit scale.")
    samples: int = Field(ge=1, description="Predictions it was fitted on.")
    positives: int = Field(ge=0, description="How many of them were correct (strict match).")

    @model_validator(mode="after")
    def _check(self) -> CalibrationMap:
        if self.method == "isotonic":
            if not self.x or len(self.x) != len(self.y):
                raise ValueError("isotonic map needs x and y breakpoints of equal, non-zero length")
            if not all(math.isfinite(v) for v in [*self.x, *self.y]):
                raise ValueError("isotonic breakpoints must be finite")
            if any(b <= a for a, b in zip(self.x, self.x[1:], strict=False)):
                raise ValueError("isotonic x must be strictly increasing")
            if any(b < a for a, b in zip(self.y, self.y[1:], strict=False)):
                raise ValueError("isotonic y must be non-decreasing (the map must be monotone)")
            if min(self.y) < 0 or max(self.y) > 1:
                raise ValueError("isotonic y must lie in [0, 1]")
        else:
            if self.a is None or self.b is None or not (math.isfinite(self.a) and math.isfinite(self.b)):
                raise ValueError("platt map needs finite a and b")
            if self.a <= 0:
                raise ValueError("platt slope a must be positive (the map must be monotone)")
        return self

    @classmethod
    def fit(cls, scores: object, correct: object, method: Method = "isotonic") -> CalibrationMap:
        c, y = _as_arrays(scores, correct)
        counts = {"samples": int(c.size), "positives": int(y.sum())}
        if method == "isotonic":
            x, v = fit_isotonic(c, y)
            return cls(method=method, x=x, y=v, **counts)
        a, b = fit_platt(c, y)
        return cls(method=method, a=a, b=b, **counts)

    def __call__(self, scores: object) -> np.ndarray:
        c = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            out = np.interp(c, self.x, self.y)  # flat beyond the outermost breakpoints
        else:
            assert self.a is not None and self.b is not None
            out = _sigmoid(self.a * _logit(c) + self.b)
        return np.clip(out, 0.0, 1.0)


class HeldOutECE(BaseModel):
    """ECE of one kind on notes the calibrator was not fitted on (cross-fitting over the dev notes)."""

    samples: int = Field(ge=0, description="Held-out predictions, all folds together.")
    before: float = Field(description="ECE of the raw scores.")
    after: float = Field(description="ECE after calibration fitted on the other fold(s).")
    per_fold: list[dict[str, float]] = Field(
        default_factory=list, description="Per held-out fold: samples, ECE before and after."
    )


class FitReport(BaseModel):
    """What a calibrator was fitted on, and how well it did."""

    notes: list[str] = Field(description="Names of the labelled notes it was fitted on (never trained on).")
    source: str = Field(description="Where the notes came from, e.g. `dev split of <data dir>`.")
    precision: str = Field(description="ONNX variant whose scores were fitted (int8 is what serves).")
    match: Literal["strict"] = Field(
        default="strict", description="A prediction is correct when gold has the same type and exact offsets."
    )
    bins: int = Field(default=ECE_BINS, description="Equal-width bins of the ECE.")
    ece_before: dict[str, float] = Field(
        description="ECE of raw scores on the fitting notes, per kind and for `span` (entities and modifiers pooled)."
    )
    ece_after_in_sample: dict[str, float] = Field(
        description="ECE after calibration on the same notes (optimistic; see held_out)."
    )
    held_out: dict[str, HeldOutECE] = Field(
        default_factory=dict, description="Cross-fitted ECE per kind: fitted on one part, measured on the other."
    )
    skipped: dict[str, str] = Field(
        default_factory=dict, description="Kinds left uncalibrated, with the reason (e.g. too few samples)."
    )


class ConfidenceCalibration(BaseModel):
    """The calibrator stored with a model (`confidence_calibration.json`)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = Field(default=1, description="File format version.")
    model: str = Field(description="`name@version` of the model whose scores it maps.")
    method: Method = Field(description="How the maps were fitted.")
    maps: dict[Kind, CalibrationMap] = Field(
        description="One map per kind; a kind without a map keeps its raw score (see fitted_on.skipped)."
    )
    fitted_on: FitReport = Field(description="Fitting data and ECE before/after.")
    transferred_from: str | None = Field(
        default=None,
        description="`name@version` of the model the maps were fitted for, when they were fitted for another model "
        "of the same training recipe (one trained on fewer notes, so that it had held-out ones: "
        "deployments/fast_tier/recipe.py); None: fitted for this model.",
    )

    def apply(self, kind: Kind, scores: object) -> np.ndarray:
        """Calibrated confidences for raw `scores` of `kind` (unchanged when the kind has no map)."""
        m = self.maps.get(kind)
        return m(scores) if m is not None else np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file

    @classmethod
    def load(cls, path: Path | str) -> ConfidenceCalibration:
        """The calibrator at `path`; a CalibrationError naming the file and the problem otherwise."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"cannot read confidence calibration {path}: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
            raise CalibrationError(f"invalid confidence calibration {path}: {problems}") from exc

    @classmethod
    def for_model(cls, model_dir: Path | str, model_tag: str) -> ConfidenceCalibration | None:
        """The model directory's calibrator, or None when it has none (the model then reports raw
        scores, documented fallback). A file that is unreadable, malformed or fitted for another
        model is an error, not a silent fallback: thresholds set on calibrated confidences would
        otherwise quietly mean something else."""
        path = Path(model_dir) / CALIBRATION_FILE
        if not path.exists():
            return None
        cal = cls.load(path)
        if cal.model != model_tag:
            raise CalibrationError(
                f"confidence calibration {path} was fitted for {cal.model}, not {model_tag}; "
                "refit it (python -m deployments.fast_tier.training.calibrate --model DIR) or delete it"
            )
        return cal
