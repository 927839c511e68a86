"""router.simulate: per-sentence errors, risk-coverage / AURC, and the simulated routed system."""

from __future__ import annotations

import numpy as np
import pytest

from clinie.brat import Document, GoldRelation, GoldSpan, document_from_result
from clinie.schema import EntitySpan, ModifierSpan, NoteResult, Relation, Route
from clinie.scoring import score_documents
from router.signals import NoteSignals
from router.simulate import (
    errors_captured_at,
    f1_summary,
    quality_curve,
    risk_coverage,
    sentence_errors,
    simulate,
)

#       0         1         2         3         4         5         6
#       0123456789012345678901234567890123456789012345678901234567890123
TEXT = "Denies chest pain. Aspirin 81 mg daily. Cough for two weeks."
SENTENCES = [(0, 18), (19, 39), (40, 60)]
GOLD = Document(
    name="n1",
    text=TEXT,
    spans=[
        GoldSpan(id="T1", label="negation", start=0, end=6),
        GoldSpan(id="T2", label="problem", start=7, end=17),
        GoldSpan(id="T3", label="drug", start=19, end=26),
        GoldSpan(id="T4", label="strength", start=27, end=32),
        GoldSpan(id="T5", label="problem", start=40, end=45),
        GoldSpan(id="T6", label="temporal", start=46, end=59),
    ],
    relations=[
        GoldRelation(entity="T2", modifier="T1"),
        GoldRelation(entity="T3", modifier="T4"),
        GoldRelation(entity="T5", modifier="T6"),
    ],
)
ROUTE = Route(tier="bert", escalated=False, reason="test")


def _ent(i: int, label: str, start: int, end: int, conf: float = 0.9) -> EntitySpan:
    return EntitySpan(id=f"T{i}", type=label, start=start, end=end, text=TEXT[start:end], confidence=conf)


def _mod(i: int, label: str, start: int, end: int, conf: float = 0.9) -> ModifierSpan:
    return ModifierSpan(id=f"T{i}", type=label, start=start, end=end, text=TEXT[start:end], confidence=conf)


def _result(entities, modifiers, relations) -> NoteResult:
    return NoteResult(
        note_id="n1",
        entities=entities,
        modifiers=modifiers,
        relations=[Relation(entity=e, modifier=m, confidence=0.9) for e, m in relations],
        route=ROUTE,
    )


def _perfect() -> NoteResult:
    return _result(
        [_ent(1, "problem", 7, 17), _ent(2, "drug", 19, 26), _ent(3, "problem", 40, 45)],
        [_mod(4, "negation", 0, 6), _mod(5, "strength", 27, 32), _mod(6, "temporal", 46, 59)],
        [("T1", "T4"), ("T2", "T5"), ("T3", "T6")],
    )


def _fast() -> NoteResult:
    """Right in sentence 0; sentence 1 has a boundary error; sentence 2 misses its relation."""
    return _result(
        [_ent(1, "problem", 7, 17), _ent(2, "drug", 19, 29), _ent(3, "problem", 40, 45)],
        [_mod(4, "negation", 0, 6), _mod(5, "strength", 27, 32), _mod(6, "temporal", 46, 59)],
        [("T1", "T4"), ("T2", "T5")],
    )


def test_sentence_errors_strict_per_sentence():
    assert sentence_errors(GOLD, _perfect(), SENTENCES).tolist() == [False, False, False]
    assert sentence_errors(GOLD, _fast(), SENTENCES).tolist() == [False, True, True]
    # relaxed: the boundary error of sentence 1 (and its relation) overlap gold, so they match
    assert sentence_errors(GOLD, _fast(), SENTENCES, mode="relaxed").tolist() == [False, False, True]
    # a false alarm alone makes its sentence wrong; an empty result is wrong wherever gold has spans
    extra = _perfect()
    extra.entities.append(_ent(7, "test", 0, 6))
    assert sentence_errors(GOLD, extra, SENTENCES).tolist() == [True, False, False]
    empty = NoteResult(note_id="n1", route=ROUTE)
    assert sentence_errors(GOLD, empty, SENTENCES).tolist() == [True, True, True]
    # a relation error is placed at its entity's sentence, not its modifier's
    cross = _result([_ent(1, "problem", 40, 45)], [_mod(2, "negation", 0, 6)], [("T1", "T2")])
    gold = Document(name="n1", text=TEXT, spans=[GoldSpan(id="T1", label="problem", start=40, end=45)])
    gold.spans.append(GoldSpan(id="T2", label="negation", start=0, end=6))
    assert sentence_errors(gold, cross, SENTENCES).tolist() == [False, False, True]


def test_risk_coverage_perfect_ranking():
    rng = np.random.default_rng(0)
    errors = rng.random(500) < 0.2
    risk = errors.astype(float) + rng.random(500) * 0.1  # every error ranked above every non-error
    rc = risk_coverage(risk, errors, rates=(float(errors.mean()), 0.2))
    assert rc["aurc"] < rc["random_aurc"] == pytest.approx(errors.mean())
    assert rc["aurc"] == pytest.approx(rc["oracle_aurc"])
    assert rc["errors_captured"][f"{errors.mean():g}"] == pytest.approx(1.0)
    assert errors_captured_at(risk, errors, errors.mean()) == pytest.approx(1.0)
    assert rc["aurc_reduction"] > 0.4
    assert len(rc["coverage"]) == len(rc["selective_risk"]) == 500
    assert rc["selective_risk"][-1] == pytest.approx(errors.mean())  # full coverage: the error rate


def test_risk_coverage_random_and_tied_rankings_are_near_random():
    rng = np.random.default_rng(1)
    errors = rng.random(4000) < 0.3
    rc = risk_coverage(rng.random(4000), errors)
    assert rc["aurc"] == pytest.approx(rc["random_aurc"], abs=0.02)
    assert errors_captured_at(rng.random(4000), errors, 0.2) == pytest.approx(0.2, abs=0.03)
    # a constant signal cannot tell anything apart: exactly random, whatever the input order
    tied = risk_coverage(np.zeros(4000), errors)
    assert tied["aurc"] == pytest.approx(tied["random_aurc"])
    assert errors_captured_at(np.zeros(4000), np.sort(errors)[::-1], 0.2) == pytest.approx(0.2)
    # a reversed ranking is worse than random
    assert risk_coverage(-errors.astype(float), errors)["aurc"] > rc["random_aurc"]


def test_risk_coverage_rejects_bad_input():
    with pytest.raises(ValueError):
        risk_coverage([0.1, np.nan], [True, False])
    with pytest.raises(ValueError):
        risk_coverage([0.1, 0.2], [True])
    with pytest.raises(ValueError):
        risk_coverage([], [])


def _setup():
    llm = _perfect()
    fast = _fast()
    return [GOLD], {"n1": fast}, {"n1": llm}, {"n1": SENTENCES}


def test_simulate_end_points():
    docs, fast, llm, sents = _setup()
    fast_only = score_documents(docs, {"n1": document_from_result("n1", TEXT, fast["n1"])})
    llm_only = score_documents(docs, {"n1": document_from_result("n1", TEXT, llm["n1"])})
    assert simulate(docs, fast, llm, {}, sents).as_dict() == fast_only.as_dict()
    assert simulate(docs, fast, llm, {"n1": []}, sents).as_dict() == fast_only.as_dict()
    assert simulate(docs, fast, llm, {"n1": [0, 1, 2]}, sents).as_dict() == llm_only.as_dict()
    # through the merge rule too (every LLM span starts inside a sentence here)
    merged = simulate(docs, fast, llm, {"n1": [0, 1, 2]}, sents, whole_note_when_all=False)
    assert merged.as_dict() == llm_only.as_dict()
    # no LLM result for a note: the fast tier's answer stands
    assert simulate(docs, fast, {}, {"n1": [0, 1, 2]}, sents).as_dict() == fast_only.as_dict()


def test_simulate_partial_escalation_fixes_only_escalated_sentences():
    docs, fast, llm, sents = _setup()
    only_1 = f1_summary(simulate(docs, fast, llm, {"n1": [1]}, sents))
    only_2 = f1_summary(simulate(docs, fast, llm, {"n1": [2]}, sents))
    fast_f1 = f1_summary(simulate(docs, fast, llm, {}, sents))
    assert only_1["strict_entities"] == 1.0 and fast_f1["strict_entities"] < 1.0
    assert only_1["strict_relations"] < 1.0  # sentence 2's relation is still missing
    assert only_2["strict_entities"] == fast_f1["strict_entities"]
    assert only_2["strict_relations"] > fast_f1["strict_relations"]


def test_quality_curve_end_points_and_gap():
    docs, fast, llm, _ = _setup()
    sig = NoteSignals(sentences=SENTENCES, sentence_chars=[e - s for s, e in SENTENCES])
    sig.per_sentence["min_token_prob"] = np.array([0.99, 0.4, 0.6])  # sentence 1 is the least certain
    curve = quality_curve(docs, fast, llm, {"n1": sig}, "min_token_prob", rates=(0.0, 1 / 3, 2 / 3, 1.0))
    pts = curve["points"]
    assert [p["escalated_sentences"] for p in pts] == [0, 1, 2, 3]
    assert pts[0]["f1"] == curve["fast_only"]["f1"] and pts[0]["llm_tokens"] == 0
    assert pts[-1]["f1"] == curve["llm_only"]["f1"] and pts[-1]["cost_fraction_of_llm_only"] == 1.0
    assert pts[1]["f1"]["strict_entities"] == 1.0
    gm = curve["gap_metrics"]["strict_entities"]
    assert gm["gap"] > 0 and gm["cpt50"] == pytest.approx(1 / 3, abs=1e-3)
    assert gm["apgr"] == pytest.approx(0.75)  # PGR 0, 1, 1, 1
    with pytest.raises(ValueError):
        quality_curve(docs, fast, llm, {"n1": sig}, "ood_mahalanobis")
