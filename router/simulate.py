"""Offline evaluation of routing on a labelled set: which sentences the fast tier gets wrong, how
well a signal ranks them (risk-coverage, AURC), and what a routed system would score at each
escalation rate (the quality-vs-cost curve, APGR, CPT).

Everything here works from results already computed once per note (the fast tier's and the LLM
tier's whole-note answers), so a whole curve costs one run of each tier, not one per point.
Pure: numpy, `clinie` and `router` only (no model library, no Ray).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clinie.brat import Document, document_from_result
from clinie.schema import NoteResult, Route
from clinie.scoring import Mode, Scores, match_spans, score_documents
from router.calibrate import threshold_for_rate
from router.merge import merge_results
from router.policies import CostModel
from router.signals import SIGNALS, NoteSignals

HEADLINE = "relaxed_entities"
DEFAULT_RATES = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1.0
F1_KEYS = tuple(f"{m}_{g}" for m in ("strict", "relaxed") for g in ("entities", "modifiers", "relations"))

# -- per-sentence errors of the fast tier ---------------------------------------------------------


def _sentence_of(starts: list[int], n: int, offset: int) -> int:
    """Index of the sentence an offset belongs to: the last one starting at or before it (an
    offset in the blank between two sentences goes to the earlier one; one before the first
    sentence to the first), the same convention as the signals'."""
    return max(0, min(n - 1, bisect.bisect_right(starts, offset) - 1))


def sentence_errors(
    doc: Document, result: NoteResult, sentences: Sequence[tuple[int, int]], mode: Mode = "strict"
) -> np.ndarray:
    """Per sentence: whether the fast tier's result differs from gold there.

    A sentence is in error when any of these belongs to it, a span belonging to the sentence its
    start offset falls in (see `_sentence_of`):
    - a gold entity or modifier that no predicted span matches (a miss), or a predicted one that
      matches no gold span (a false alarm, or a boundary or type error);
    - a gold relation that no predicted relation matches, or a predicted relation that matches no
      gold relation, placed at its entity's start.
    Matching is the scorer's (`clinie.scoring.match_spans`, one-to-one): `strict` = same type and
    offsets (the default: any difference at all), `relaxed` = same type and overlapping; a
    relation matches when both its spans match the gold relation's. So a sentence without error
    contributes no false positive and no false negative to that mode's F1 of any group.
    """
    n = len(sentences)
    wrong = np.zeros(n, dtype=bool)
    if n == 0:
        return wrong
    starts = [s for s, _ in sentences]
    pred = document_from_result(doc.name, doc.text, result)
    gold_by_id = {s.id: s for s in doc.spans}
    pred_by_id = {s.id: s for s in pred.spans}
    mapping: dict[str, str] = {}
    for gold_group, pred_group in ((doc.entities, pred.entities), (doc.modifiers, pred.modifiers)):
        matched = match_spans(gold_group, pred_group, mode)
        mapping.update(matched)
        hit = set(matched.values())
        for s in pred_group:
            if s.id not in matched:
                wrong[_sentence_of(starts, n, s.start)] = True
        for g in gold_group:
            if g.id not in hit:
                wrong[_sentence_of(starts, n, g.start)] = True
    gold_rels = Counter((r.entity, r.modifier) for r in doc.relations)
    for r in pred.relations:
        key = (mapping.get(r.entity), mapping.get(r.modifier))
        if None not in key and gold_rels[key] > 0:  # type: ignore[index]
            gold_rels[key] -= 1  # type: ignore[index]
        else:
            wrong[_sentence_of(starts, n, pred_by_id[r.entity].start)] = True
    for (ent, _), left in gold_rels.items():
        if left > 0:
            wrong[_sentence_of(starts, n, gold_by_id[ent].start)] = True
    return wrong


def score_counts(scores: Scores) -> np.ndarray:
    """(tp, fp, fn) per F1 key (`F1_KEYS` order): shape [len(F1_KEYS), 3]."""
    out = np.zeros((len(F1_KEYS), 3))
    for k, key in enumerate(F1_KEYS):
        mode, group = key.split("_", 1)
        prf = scores.overall.get(mode, {}).get(group)
        if prf is not None:
            out[k] = (prf.tp, prf.fp, prf.fn)
    return out


def _by_sentence(doc: Document, starts: list[int], n: int) -> list[Document]:
    """The document cut into one document per sentence: a span goes to the sentence its start
    falls in (as in the merge), a relation to its entity's sentence when its modifier is there too."""
    spans: list[list[Any]] = [[] for _ in range(n)]
    where: dict[str, int] = {}
    for s in doc.spans:
        i = _sentence_of(starts, n, s.start)
        spans[i].append(s)
        where[s.id] = i
    rels: list[list[Any]] = [[] for _ in range(n)]
    for r in doc.relations:
        i = where.get(r.entity)
        if i is not None and where.get(r.modifier) == i:
            rels[i].append(r)
    return [Document(name=doc.name, text=doc.text, spans=spans[i], relations=rels[i]) for i in range(n)]


def sentence_deltas(
    doc: Document, fast: NoteResult, llm: NoteResult, sentences: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Per sentence, how the counts change when that sentence takes the LLM tier's answer instead
    of the fast tier's: shape [len(sentences), len(F1_KEYS), 3] of (d tp, d fp, d fn).

    Each tier is scored against gold within the sentence alone (spans by their start, relations
    by their entity, as `router.merge` assigns them), so the deltas of different sentences add up:
    escalating a set of sentences changes the corpus counts by the sum of their deltas (up to
    relaxed matches and relations that cross a sentence boundary, which are rare).
    """
    n = len(sentences)
    out = np.zeros((n, len(F1_KEYS), 3))
    if n == 0:
        return out
    starts = [s for s, _ in sentences]
    gold = _by_sentence(doc, starts, n)
    fast_docs = _by_sentence(document_from_result(doc.name, doc.text, fast), starts, n)
    llm_docs = _by_sentence(document_from_result(doc.name, doc.text, llm), starts, n)
    for i in range(n):
        if not fast_docs[i].spans and not llm_docs[i].spans:
            continue  # both tiers answer nothing here: the same counts
        f = score_counts(score_documents([gold[i]], {doc.name: fast_docs[i]}))
        g = score_counts(score_documents([gold[i]], {doc.name: llm_docs[i]}))
        out[i] = g - f
    return out


# -- selective prediction: risk-coverage -----------------------------------------------------------


def _cumulative_errors(risk: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """`out[k]` = expected errors among the k least risky items (k = 0..n).

    Ties are handled deterministically by their expectation over every order within a tie group
    (the group's errors are spread evenly over its positions), so a signal that cannot tell items
    apart is scored like a random ranking of them, never favoured by the input order.
    """
    n = len(risk)
    out = np.zeros(n + 1)
    if n == 0:
        return out
    order = np.argsort(risk, kind="stable")
    rs, es = risk[order], errors[order]
    _, first, counts = np.unique(rs, return_index=True, return_counts=True)
    group_err = np.add.reduceat(es, first)
    before = np.concatenate([[0.0], np.cumsum(group_err)[:-1]])
    gid = np.repeat(np.arange(len(first)), counts)
    pos = np.arange(n) - first[gid] + 1
    out[1:] = before[gid] + pos / counts[gid] * group_err[gid]
    return out


def _check(risk: np.ndarray | Sequence[float], errors: np.ndarray | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(risk, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    if r.shape != e.shape:
        raise ValueError(f"risk and errors differ in length ({len(r)} vs {len(e)})")
    if not np.all(np.isfinite(r)):
        raise ValueError("risk holds NaN or infinite values")
    if np.any((e < 0) | (e > 1)):
        raise ValueError("errors must be booleans or losses within 0..1")
    return r, e


def errors_captured_at(risk: np.ndarray | Sequence[float], errors: np.ndarray | Sequence[float], rate: float) -> float:
    """Fraction of all errors among the `round(rate * n)` riskiest items (ties: in expectation).

    Random ranking: `rate`. With no error at all it is 1.0 (nothing was missed).
    """
    r, e = _check(risk, errors)
    total = float(e.sum())
    if total == 0:
        return 1.0
    n = len(r)
    m = round(rate * n)
    cum = _cumulative_errors(r, e)
    return float((total - cum[n - m]) / total)


def risk_coverage(
    risk: np.ndarray | Sequence[float],
    errors: np.ndarray | Sequence[float],
    rates: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
) -> dict[str, Any]:
    """Risk-coverage curve of a ranking (higher `risk` = less trusted), as in selective prediction.

    The fast tier keeps the `k` least risky items (coverage `k / n`) and the rest are escalated;
    selective risk is the error rate among the kept ones. `errors` are booleans (or losses in
    0..1). Returns the curve (`coverage`, `selective_risk`, k = 1..n), `aurc` (mean selective risk
    over the n coverage points), `random_aurc` (a random ranking's expected AURC: the overall error
    rate), `oracle_aurc` (the best any ranking can do), `aurc_reduction` (1 - aurc / random) and
    `errors_captured` ({rate: fraction of all errors among the riskiest `rate`}) with the most any
    ranking could capture (`oracle_errors_captured`: below 1 when errors outnumber `rate * n`).
    """
    r, e = _check(risk, errors)
    n = len(r)
    if n == 0:
        raise ValueError("no items to rank")
    k = np.arange(1, n + 1)
    cum = _cumulative_errors(r, e)
    sel = cum[1:] / k
    oracle = _cumulative_errors(e, e)[1:] / k  # the erroneous items ranked riskiest
    rate = float(e.mean())
    aurc = float(sel.mean())
    total = float(e.sum())
    captured = {f"{x:g}": 1.0 if total == 0 else float((total - cum[n - round(x * n)]) / total) for x in rates}
    best = {f"{x:g}": 1.0 if total == 0 else min(1.0, round(x * n) / total) for x in rates}
    return {
        "n": n,
        "errors": total,
        "error_rate": rate,
        "coverage": (k / n).tolist(),
        "selective_risk": sel.tolist(),
        "aurc": aurc,
        "random_aurc": rate,
        "oracle_aurc": float(oracle.mean()),
        "aurc_reduction": (1.0 - aurc / rate) if rate > 0 else 0.0,
        "errors_captured": captured,
        "oracle_errors_captured": best,
    }


# -- the routed system, simulated ------------------------------------------------------------------


def f1_summary(scores: Scores) -> dict[str, float]:
    """Overall F1 per mode and group, e.g. `relaxed_entities`."""
    return {key: round(scores.f1(*key.split("_", 1)), 4) for key in F1_KEYS}  # type: ignore[arg-type]


def simulate(
    docs: Sequence[Document],
    fast_results: Mapping[str, NoteResult],
    llm_results: Mapping[str, NoteResult],
    escalated: Mapping[str, Sequence[int]],
    sentences: Mapping[str, Sequence[tuple[int, int]]],
    whole_note_when_all: bool = True,
) -> Scores:
    """Scores of the routed system that escalates, per note, the listed sentence indexes.

    The LLM tier's answer for a note is its whole-note result; `router.merge.merge_results`
    keeps it only inside the escalated sentences. That equals a real partial escalation because
    the LLM tier cuts a note into sentence chunks (`deployments.llm_tier.extract.chunk_note`, the
    same sentence splitter) and prompts each chunk on its own, so a sentence's LLM answer does
    not depend on which other sentences were sent (with greedy decoding).

    When every sentence of a note is escalated and `whole_note_when_all` (the threshold policy's
    default `whole_note_fraction: 1.0`), the note gets the LLM result as is, as the router's
    `note` action does. A note without an LLM result (the LLM tier failed on it) keeps the fast
    tier's answer, as the running system does.
    """
    preds: dict[str, Document] = {}
    for doc in docs:
        fast = fast_results[doc.name]
        llm = llm_results.get(doc.name)
        ranges = list(sentences[doc.name])
        chosen = sorted(set(escalated.get(doc.name, ())))
        if llm is None or not chosen:
            preds[doc.name] = document_from_result(doc.name, doc.text, fast)
        elif whole_note_when_all and len(chosen) == len(ranges):
            preds[doc.name] = document_from_result(doc.name, doc.text, llm)
        else:
            entities, modifiers, relations = merge_results(fast, llm, [ranges[i] for i in chosen])
            route = Route(tier="bert+llm", escalated=True, reason="simulated")
            merged = NoteResult(
                note_id=doc.name, entities=entities, modifiers=modifiers, relations=relations, route=route
            )
            preds[doc.name] = document_from_result(doc.name, doc.text, merged)
    return score_documents(docs, preds)


def _flagged(values: np.ndarray, signal: str, threshold: float) -> np.ndarray:
    return values > threshold if SIGNALS[signal].riskier == "higher" else values < threshold


def _gap_metrics(curve: list[dict[str, Any]], fast_f1: float, llm_f1: float, key: str) -> dict[str, Any]:
    """APGR and CPT(50%) of one F1 over the curve points."""
    gap = llm_f1 - fast_f1
    if gap == 0:
        return {"fast": fast_f1, "llm": llm_f1, "gap": 0.0, "apgr": None, "apgr_area": None, "cpt50": None}
    pgr = [(p["realized_rate"], (p["f1"][key] - fast_f1) / gap) for p in curve]
    xs = np.array([0.0, *(x for x, _ in sorted(pgr)), 1.0])
    ys = np.array([0.0, *(y for _, y in sorted(pgr)), 1.0])
    cpt = next((x for x, y in sorted(pgr) if y >= 0.5), None)
    return {
        "fast": fast_f1,
        "llm": llm_f1,
        "gap": round(gap, 4),
        "apgr": round(float(np.mean([y for _, y in pgr])), 4),
        "apgr_area": round(float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2)), 4),
        "cpt50": cpt,
    }


@dataclass(frozen=True)
class _CurveBasis:
    """What every point of a quality curve shares: the notes, the pooled per-sentence values of the
    signal, each note's sentences, and the cost model with the costs of the end points."""

    names: list[str]
    pooled: np.ndarray
    sentences: dict[str, list[tuple[int, int]]]
    costs: CostModel
    llm_tokens_all: float  # every sentence of every note escalated
    fast_cost: float  # the fast pass over every note

    def cost(self, tokens: float, fast: bool = True) -> float:
        return round(tokens * self.costs.llm_cost_per_token + (self.fast_cost if fast else 0.0), 2)


def _curve_basis(
    docs: Sequence[Document], signals: Mapping[str, NoteSignals], signal: str, costs: CostModel
) -> _CurveBasis:
    if SIGNALS.get(signal) is None or SIGNALS[signal].scope != "sentence":
        raise ValueError(f"quality_curve needs a sentence signal, not {signal!r}")
    names = [d.name for d in docs]
    missing = [n for n in names if signal not in signals[n].per_sentence]
    if missing:
        raise ValueError(f"signal {signal!r} is missing for {len(missing)} notes")
    all_chars = [c for n in names for c in signals[n].sentence_chars]
    return _CurveBasis(
        names=names,
        pooled=np.concatenate([signals[n].per_sentence[signal] for n in names]),
        sentences={n: signals[n].sentences for n in names},
        costs=costs,
        llm_tokens_all=costs.llm_tokens(all_chars),
        fast_cost=costs.fast_cost_per_call * len(names),
    )


def _curve_point(
    docs: Sequence[Document],
    fast_results: Mapping[str, NoteResult],
    llm_results: Mapping[str, NoteResult],
    signals: Mapping[str, NoteSignals],
    signal: str,
    basis: _CurveBasis,
    rate: float,
) -> dict[str, Any]:
    """One point of the curve: escalate every sentence on the risky side of the threshold for `rate`."""
    threshold = threshold_for_rate(basis.pooled, signal, rate)
    escalated: dict[str, list[int]] = {}
    chars: list[int] = []
    for n in basis.names:
        idx = [int(i) for i in np.flatnonzero(_flagged(signals[n].per_sentence[signal], signal, threshold))]
        if idx:
            escalated[n] = idx
            chars += [signals[n].sentence_chars[i] for i in idx]
    scores = simulate(docs, fast_results, llm_results, escalated, basis.sentences)
    tokens = basis.costs.llm_tokens(chars)
    return {
        "rate": rate,
        "threshold": threshold,
        "realized_rate": round(len(chars) / len(basis.pooled), 4),
        "escalated_sentences": len(chars),
        "escalated_notes": len(escalated),
        "llm_tokens": round(tokens, 1),
        "cost": basis.cost(tokens),
        "cost_fraction_of_llm_only": round(tokens / basis.llm_tokens_all, 4) if basis.llm_tokens_all else 0.0,
        "f1": f1_summary(scores),
    }


def _llm_only_scores(
    docs: Sequence[Document], fast_results: Mapping[str, NoteResult], llm_results: Mapping[str, NoteResult]
) -> Scores:
    """Every note's LLM result as is (the fast tier's where the LLM tier has none)."""
    llm_docs = {
        d.name: document_from_result(d.name, d.text, llm_results.get(d.name) or fast_results[d.name]) for d in docs
    }
    return score_documents(docs, llm_docs)


def quality_curve(
    docs: Sequence[Document],
    fast_results: Mapping[str, NoteResult],
    llm_results: Mapping[str, NoteResult],
    signals: Mapping[str, NoteSignals],
    signal: str,
    rates: Sequence[float] = DEFAULT_RATES,
    costs: CostModel | None = None,
    headline: str = HEADLINE,
) -> dict[str, Any]:
    """F1 of the routed system against the fraction of sentences escalated and against cost.

    For each target rate the threshold is `router.calibrate.threshold_for_rate` over the pooled
    per-sentence values of `signal` on this set (what `clinie calibrate` would write) and every
    sentence on the risky side is escalated. Cost is the cost model's estimate of the LLM tokens
    of the escalated sentences (`CostModel.llm_tokens`) times `llm_cost_per_token`, plus
    `fast_cost_per_call` per note for the fast pass.

    End points: `fast_only` (nothing escalated) and `llm_only` (every note's LLM result as is, no
    fast pass). `gap_metrics` has, per F1 (`headline`: relaxed entity F1 by default):
    - `apgr`: average performance gap recovered, the mean over the curve points of
      (F1(r) - F1_fast) / (F1_llm - F1_fast) (RouteLLM's APGR, with extraction F1 for quality);
      `apgr_area` is the same as the area under that curve over the realized rate, from (0, 0)
      to (1, 1);
    - `cpt50`: call-performance threshold, the smallest realized rate whose point recovers at
      least 50% of the gap (None when none does).
    When F1_llm < F1_fast the gap is negative: PGR then measures how much of the LLM's *loss* a
    rate takes on, so a low APGR is good and CPT(50%) is the rate at which half the loss is taken.
    """
    basis = _curve_basis(docs, signals, signal, costs or CostModel())
    fast_scores = simulate(docs, fast_results, llm_results, {}, basis.sentences)
    llm_scores = _llm_only_scores(docs, fast_results, llm_results)
    points = [_curve_point(docs, fast_results, llm_results, signals, signal, basis, rate) for rate in rates]
    fast_f1, llm_f1 = f1_summary(fast_scores), f1_summary(llm_scores)
    return {
        "signal": signal,
        "headline": headline,
        "notes": len(basis.names),
        "sentences": len(basis.pooled),
        "llm_missing": sorted(n for n in basis.names if n not in llm_results),
        "points": points,
        "fast_only": {"realized_rate": 0.0, "llm_tokens": 0.0, "cost": basis.cost(0.0), "f1": fast_f1},
        "llm_only": {
            "realized_rate": 1.0,
            "llm_tokens": round(basis.llm_tokens_all, 1),
            "cost": basis.cost(basis.llm_tokens_all, fast=False),
            "f1": llm_f1,
        },
        "gap_metrics": {key: _gap_metrics(points, fast_f1[key], llm_f1[key], key) for key in F1_KEYS},
    }
