"""Calibration: choose a policy's threshold on a labelled dev set (as RouteLLM does, thresholds
are quantiles of the signal on that set), and measure the `gain` policy's table.

Targets: an escalation rate (fraction of sentences or notes), a budget (cost per minute at an
expected traffic), or an F1 (the smallest rate whose simulated F1 reaches it, from a
quality-vs-rate curve computed with `router.simulate`).

Gain table (`fit_gain_table`): with the LLM tier's answers on the same labelled notes, every
sentence gets the change of corpus F1 that taking the LLM tier's answer there would cause (from
`router.simulate.sentence_deltas`, linear in the share of sentences escalated: see
`router.policies.gain`), and the sentences are pooled into quantile buckets of one signal.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from router.policies.gain import METRICS
from router.signals import SIGNALS, NoteSignals

if TYPE_CHECKING:
    from clinie.brat import Document
    from clinie.schema import NoteResult

DEFAULT_GAIN_METRICS = ("relaxed_entities", "relaxed_modifiers", "relaxed_relations")


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


# -- the gain table ----------------------------------------------------------------------------------


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn) over the last axis (tp, fp, fn); 0 where there is nothing."""
    c = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)


def sentence_gains(base: np.ndarray, deltas: np.ndarray, metrics: Sequence[str] = DEFAULT_GAIN_METRICS) -> np.ndarray:
    """Per sentence: N times the change of corpus F1 (mean over `metrics`) when only that sentence
    takes the LLM tier's answer, N = number of sentences. `base`: corpus counts of the fast tier,
    shape [len(METRICS), 3]; `deltas`: per sentence, shape [N, len(METRICS), 3] (both in
    `METRICS` order, as `router.simulate.score_counts` / `sentence_deltas` give them).

    Scaled by N so that it is a gain per unit share of sentences: escalating a set S moves F1 by
    about |S| / N times the mean gain over S, whatever the size of the calibration set.
    """
    idx = [METRICS.index(m) for m in metrics]
    d = np.asarray(deltas, dtype=np.float64)
    n = d.shape[0]
    if n == 0:
        return np.zeros(0)
    b = np.asarray(base, dtype=np.float64)[idx]  # [M, 3]
    change = f1_from_counts(b[None, :, :] + d[:, idx, :]) - f1_from_counts(b)[None, :]
    return n * change.mean(axis=1)


def bucket_of(uppers: Sequence[float], value: float) -> int:
    """Index of the bucket a value falls in (the same rule as the `gain` policy's lookup)."""
    return bisect.bisect_right(list(uppers), value)


def gain_buckets(
    values: np.ndarray | Sequence[float],
    gains: np.ndarray | Sequence[float],
    buckets: int | None = None,
    min_per_bucket: int = 50,
    max_buckets: int = 10,
) -> list[dict[str, Any]]:
    """The gain table: quantile buckets of `values` with the mean gain, its standard error and
    the number of sentences of each; `upper` rises, the last bucket is unbounded (None).

    `buckets` (default: as many as give `min_per_bucket` sentences each, at most `max_buckets`)
    are cut at the quantiles, moved to the nearest change of value when they fall inside a run of
    ties (tied values never straddle a cut), at the midpoint between the two values; no bucket is
    empty.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    g = np.asarray(gains, dtype=np.float64).ravel()
    if v.shape != g.shape:
        raise ValueError(f"values and gains differ in length ({len(v)} vs {len(g)})")
    if len(v) == 0:
        return []
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(g))):
        raise ValueError("values and gains must be finite")
    k = buckets if buckets is not None else max(1, min(max_buckets, len(v) // max(min_per_bucket, 1)))
    if k < 1:
        raise ValueError("buckets must be at least 1")
    srt = np.sort(v)
    # positions where the sorted values change: the only places a cut can go without splitting ties
    boundaries = np.flatnonzero(np.diff(srt) > 0) + 1
    uppers: list[float] = []
    for j in range(1, k):
        if len(boundaries) == 0:
            break
        c = boundaries[np.argmin(np.abs(boundaries - j * len(v) / k))]  # the nearest to the quantile
        edge = float((srt[c - 1] + srt[c]) / 2)
        if not uppers or edge > uppers[-1]:
            uppers.append(edge)
    which = np.array([bucket_of(uppers, float(x)) for x in v], dtype=np.int64)
    rows: list[dict[str, Any]] = []
    for b in range(len(uppers) + 1):
        sel = g[which == b]
        se = float(sel.std(ddof=1) / np.sqrt(len(sel))) if len(sel) > 1 else 0.0
        rows.append(
            {
                "upper": uppers[b] if b < len(uppers) else None,
                "gain": float(sel.mean()),
                "se": se,
                "sentences": len(sel),
            }
        )
    return rows


def _check_gain_inputs(
    docs: Sequence[Document], signals: Mapping[str, NoteSignals], signal: str, metrics: Sequence[str]
) -> list[str]:
    """The notes' names, after checking that `signal` and `metrics` can make a gain table of them."""
    # imported here: router.simulate imports this module (threshold_for_rate)
    from router.simulate import F1_KEYS

    if tuple(F1_KEYS) != METRICS:
        raise AssertionError("router.simulate.F1_KEYS and router.policies.gain.METRICS differ")
    if SIGNALS.get(signal) is None or SIGNALS[signal].scope != "sentence":
        raise ValueError(f"the gain table needs a sentence signal, not {signal!r}")
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown F1 {bad[0] if bad else None!r}; known: {', '.join(METRICS)}")
    names = [d.name for d in docs]
    missing = [n for n in names if signal not in signals[n].per_sentence]
    if missing:
        raise ValueError(f"signal {signal!r} is missing for {len(missing)} notes")
    return names


def _counts_and_deltas(
    docs: Sequence[Document],
    fast_results: Mapping[str, NoteResult],
    llm_results: Mapping[str, NoteResult],
    signals: Mapping[str, NoteSignals],
) -> tuple[np.ndarray, np.ndarray]:
    """The fast tier's corpus counts and every sentence's deltas (`METRICS` order), notes in order.

    A note without an LLM answer gets zero deltas: a failed escalation answers from the fast tier.
    """
    from clinie.brat import document_from_result
    from clinie.scoring import score_documents
    from router.simulate import score_counts, sentence_deltas

    preds = {d.name: document_from_result(d.name, d.text, fast_results[d.name]) for d in docs}
    base = score_counts(score_documents(docs, preds))
    deltas = []
    for d in docs:
        llm = llm_results.get(d.name)
        sents = signals[d.name].sentences
        deltas.append(
            np.zeros((len(sents), len(METRICS), 3))
            if llm is None
            else sentence_deltas(d, fast_results[d.name], llm, sents)
        )
    all_deltas = np.concatenate(deltas) if deltas else np.zeros((0, len(METRICS), 3))
    return base, all_deltas


def _gaining_sentences(
    names: Sequence[str], signals: Mapping[str, NoteSignals], signal: str, rows: Sequence[Mapping[str, Any]]
) -> dict[str, list[int]]:
    """Per note, the sentences that fall in a bucket with a positive gain (notes without any left out)."""
    uppers = [r["upper"] for r in rows[:-1]]
    positive = {i for i, r in enumerate(rows) if r["gain"] > 0}
    escalated: dict[str, list[int]] = {}
    for n in names:
        idx = [i for i, x in enumerate(signals[n].per_sentence[signal]) if bucket_of(uppers, float(x)) in positive]
        if idx:
            escalated[n] = idx
    return escalated


def fit_gain_table(
    docs: Sequence[Document],
    fast_results: Mapping[str, NoteResult],
    llm_results: Mapping[str, NoteResult],
    signals: Mapping[str, NoteSignals],
    signal: str,
    metrics: Sequence[str] = DEFAULT_GAIN_METRICS,
    buckets: int | None = None,
    min_per_bucket: int = 50,
) -> dict[str, Any]:
    """Measure the gain table of `signal` on labelled notes with both tiers' answers.

    Returns `buckets` (for the `gain` policy), the per-sentence `values` and `gains` it was built
    from, and a summary: `sentences`, `notes`, `llm_missing` (notes without an LLM answer: their
    sentences gain nothing, as a failed escalation answers from the fast tier), `fast_f1` and the
    F1 of the routed system that escalates every bucket with a positive gain (`gaining_f1`, on
    the same notes: in-sample).
    """
    # imported here: router.simulate imports this module (threshold_for_rate)
    from router.simulate import f1_summary, simulate

    names = _check_gain_inputs(docs, signals, signal, metrics)
    base, all_deltas = _counts_and_deltas(docs, fast_results, llm_results, signals)
    values = np.concatenate([signals[n].per_sentence[signal] for n in names]) if names else np.zeros(0)
    gains = sentence_gains(base, all_deltas, metrics)
    rows = gain_buckets(values, gains, buckets=buckets, min_per_bucket=min_per_bucket)
    escalated = _gaining_sentences(names, signals, signal, rows)
    sentences = {n: signals[n].sentences for n in names}
    return {
        "signal": signal,
        "metrics": list(metrics),
        "buckets": rows,
        "values": values,
        "gains": gains,
        "sentences": len(values),
        "notes": len(names),
        "llm_missing": sorted(n for n in names if n not in llm_results),
        "fast_f1": f1_summary(simulate(docs, fast_results, llm_results, {}, sentences)),
        "gaining_f1": f1_summary(simulate(docs, fast_results, llm_results, escalated, sentences)),
        "gaining_sentences": int(sum(len(v) for v in escalated.values())),
    }


def gain_policy_spec(
    table: Mapping[str, Any], min_gain_per_cost: float = 0.0, margin_se: float = 1.0
) -> dict[str, Any]:
    """A `gain` policy mapping (for a policy file) from `fit_gain_table`'s result."""
    return {
        "kind": "gain",
        "signal": table["signal"],
        "min_gain_per_cost": float(min_gain_per_cost),
        "margin_se": float(margin_se),
        "metrics": list(table["metrics"]),
        "buckets": [
            {
                "upper": None if r["upper"] is None else float(r["upper"]),  # unrounded: the cut itself
                "gain": round(float(r["gain"]), 6),
                "se": round(float(r["se"]), 6),
                "sentences": int(r["sentences"]),
            }
            for r in table["buckets"]
        ],
    }
