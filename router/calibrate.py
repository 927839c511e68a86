"""Calibration: choose a policy's threshold on a labelled dev set (as RouteLLM does, thresholds
are quantiles of the signal on that set).

Targets: an escalation rate (fraction of sentences or notes), a budget (cost per minute at an
expected traffic), or an F1 (the smallest rate whose simulated F1 reaches it, from a
quality-vs-rate curve computed with `router.simulate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from router.signals import SIGNALS, NoteSignals


def threshold_for_rate(values: np.ndarray, signal: str, rate: float) -> float:
    """Threshold at which about `rate` of `values` are on the risky side.

    The threshold is the midpoint between the two order statistics that bracket the cut, so
    the realized rate on the calibration set is exact up to ties, and new traffic from the same
    distribution lands near `rate`.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be within 0..1")
    v = np.sort(np.asarray(values, dtype=np.float64))
    if len(v) == 0:
        raise ValueError("no values to calibrate on")
    k = round(rate * len(v))  # how many to flag
    if SIGNALS[signal].riskier == "higher":  # flag the k largest: value > threshold
        if k == 0:
            return float(v[-1]) + 1e-9
        if k == len(v):
            return float(v[0]) - 1e-9
        return float((v[len(v) - k - 1] + v[len(v) - k]) / 2)
    if k == 0:  # flag the k smallest: value < threshold
        return float(v[0]) - 1e-9
    if k == len(v):
        return float(v[-1]) + 1e-9
    return float((v[k - 1] + v[k]) / 2)


def flagged_fraction(values: np.ndarray, signal: str, threshold: float) -> float:
    v = np.asarray(values)
    hit = v > threshold if SIGNALS[signal].riskier == "higher" else v < threshold
    return float(hit.mean()) if len(v) else 0.0


def signal_values(notes: Sequence[NoteSignals], signal: str, unit: Literal["sentence", "note"]) -> np.ndarray:
    """A signal's values over a set, per sentence or per note (the note's worst sentence)."""
    if unit == "note" or SIGNALS[signal].scope == "note":
        return np.array([n.note[signal] for n in notes if signal in n.note])
    return np.concatenate([n.per_sentence[signal] for n in notes if signal in n.per_sentence] or [np.zeros(0)])


def rate_for_budget(
    notes: Sequence[NoteSignals], budget_per_minute: float, notes_per_minute: float, cost_per_sentence: float
) -> float:
    """Sentence escalation rate whose expected cost per minute fits the budget."""
    if notes_per_minute <= 0 or cost_per_sentence <= 0:
        raise ValueError("notes_per_minute and cost_per_sentence must be positive")
    mean_sentences = float(np.mean([len(n.sentences) for n in notes]))
    affordable = budget_per_minute / (notes_per_minute * cost_per_sentence)
    return float(min(1.0, affordable / max(mean_sentences, 1e-9)))


def rate_for_f1(curve: Sequence[tuple[float, float]], target: float) -> float:
    """Smallest escalation rate of a (rate, F1) curve whose F1 reaches `target`; ValueError if none."""
    for rate, f1 in sorted(curve):
        if f1 >= target:
            return rate
    best = max(f1 for _, f1 in curve) if curve else float("nan")
    raise ValueError(f"no escalation rate reaches F1 {target:.3f} on this set (best {best:.3f})")
