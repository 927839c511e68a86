"""Calibration: thresholds for a target escalation rate, budget and F1 targets, signal values."""

from __future__ import annotations

import numpy as np
import pytest

from router import NoteSignals
from router.calibrate import flagged_fraction, rate_for_budget, rate_for_f1, signal_values, threshold_for_rate

N = 5000
RATES = [0.0, 0.1, 0.2, 0.5, 1.0]
DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(1.0, 0.4, n),
    "uniform": lambda rng, n: rng.uniform(0.0, 1.0, n),
}


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("signal", ["max_entropy", "min_token_prob"])  # higher / lower is riskier
@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_threshold_hits_the_rate(dist, signal, rate):
    draw = DISTRIBUTIONS[dist]
    calib = draw(np.random.default_rng(11), N)
    t = threshold_for_rate(calib, signal, rate)
    assert abs(flagged_fraction(calib, signal, t) - rate) <= 1 / N
    fresh = draw(np.random.default_rng(12), N)
    assert abs(flagged_fraction(fresh, signal, t) - rate) <= 0.03


@pytest.mark.parametrize(("signal", "risky_end"), [("max_entropy", "top"), ("min_token_prob", "bottom")])
def test_flagged_values_are_on_the_risky_side(signal, risky_end):
    values = np.random.default_rng(3).normal(size=1000)
    t = threshold_for_rate(values, signal, 0.2)
    flagged = values > t if risky_end == "top" else values < t
    assert flagged.sum() == 200
    if risky_end == "top":
        assert values[flagged].min() > values[~flagged].max()
    else:
        assert values[flagged].max() < values[~flagged].min()


def test_threshold_is_a_midpoint_between_order_statistics():
    values = np.array([0.1, 0.4, 0.2, 0.3])
    assert threshold_for_rate(values, "min_token_prob", 0.5) == pytest.approx(0.25)
    assert threshold_for_rate(values, "max_entropy", 0.25) == pytest.approx(0.35)


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="rate"):
        threshold_for_rate(np.ones(3), "min_token_prob", 1.5)
    with pytest.raises(ValueError, match="rate"):
        threshold_for_rate(np.ones(3), "min_token_prob", -0.1)
    with pytest.raises(ValueError, match="no values"):
        threshold_for_rate(np.zeros(0), "min_token_prob", 0.1)


def test_flagged_fraction_of_nothing_is_zero():
    assert flagged_fraction(np.zeros(0), "max_entropy", 0.0) == 0.0


def notes(*counts: int) -> list[NoteSignals]:
    return [
        NoteSignals(sentences=[(i, i + 1) for i in range(c)], sentence_chars=[1] * c, per_sentence={}, note={})
        for c in counts
    ]


def test_rate_for_budget_arithmetic():
    ns = notes(2, 4)  # 3 sentences per note on average
    # 45 per minute / (10 notes per minute * 5 per sentence) = 0.9 sentences per note = 30% of 3
    assert rate_for_budget(ns, 45.0, 10.0, 5.0) == pytest.approx(0.3)
    assert rate_for_budget(ns, 150.0, 10.0, 5.0) == pytest.approx(1.0)
    assert rate_for_budget(ns, 1500.0, 10.0, 5.0) == 1.0  # never above 1
    assert rate_for_budget(ns, 0.0, 10.0, 5.0) == 0.0
    assert rate_for_budget(notes(1), 10.0, 20.0, 2.0) == pytest.approx(0.25)


@pytest.mark.parametrize(("per_minute", "per_sentence"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_rate_for_budget_rejects_non_positive_inputs(per_minute, per_sentence):
    with pytest.raises(ValueError, match="positive"):
        rate_for_budget(notes(2), 10.0, per_minute, per_sentence)


def test_rate_for_f1_picks_the_smallest_rate_reaching_the_target():
    curve = [(0.5, 0.90), (0.1, 0.80), (0.3, 0.85), (0.2, 0.85), (0.0, 0.75)]  # unsorted on purpose
    assert rate_for_f1(curve, 0.85) == 0.2
    assert rate_for_f1(curve, 0.86) == 0.5
    assert rate_for_f1(curve, 0.70) == 0.0
    assert rate_for_f1([(0.1, 0.86), (0.2, 0.84), (0.3, 0.87)], 0.85) == 0.1  # not monotone


def test_rate_for_f1_raises_when_no_rate_reaches_the_target():
    with pytest.raises(ValueError, match=r"F1 0\.950.*best 0\.900"):
        rate_for_f1([(0.1, 0.8), (0.5, 0.9)], 0.95)
    with pytest.raises(ValueError):
        rate_for_f1([], 0.5)


def test_signal_values_per_sentence_and_per_note():
    a = NoteSignals(
        sentences=[(0, 5), (6, 10)],
        sentence_chars=[5, 4],
        per_sentence={"min_token_prob": np.array([0.9, 0.3]), "max_entropy": np.array([0.1, 0.8])},
        note={"min_token_prob": 0.3, "max_entropy": 0.8, "ood_mahalanobis": 1.5},
    )
    b = NoteSignals(
        sentences=[(0, 3)],
        sentence_chars=[3],
        per_sentence={"min_token_prob": np.array([0.5])},
        note={"min_token_prob": 0.5},
    )
    assert signal_values([a, b], "min_token_prob", "sentence").tolist() == [0.9, 0.3, 0.5]
    assert signal_values([a, b], "min_token_prob", "note").tolist() == [0.3, 0.5]
    # notes without the signal are left out
    assert signal_values([a, b], "max_entropy", "sentence").tolist() == [0.1, 0.8]
    assert signal_values([a, b], "max_entropy", "note").tolist() == [0.8]
    # a note-scope signal is per note whatever the unit asked
    assert signal_values([a, b], "ood_mahalanobis", "sentence").tolist() == [1.5]
    assert signal_values([b], "max_energy", "sentence").tolist() == []


def test_calibrated_threshold_reproduces_the_rate_on_signal_values():
    rng = np.random.default_rng(5)
    ns = [
        NoteSignals(
            sentences=[(i, i + 1) for i in range(k)],
            sentence_chars=[1] * k,
            per_sentence={"min_token_prob": rng.uniform(size=k)},
            note={},
        )
        for k in rng.integers(1, 8, size=400)
    ]
    values = signal_values(ns, "min_token_prob", "sentence")
    assert len(values) == sum(len(n.sentences) for n in ns)
    t = threshold_for_rate(values, "min_token_prob", 0.15)
    flagged = sum(int((n.per_sentence["min_token_prob"] < t).sum()) for n in ns)
    assert abs(flagged / len(values) - 0.15) <= 1 / len(values)
