"""Hand-computed cases for the scorer of extraction-schema.md."""

import pytest

from clinie.brat import Document, GoldRelation, GoldSpan
from clinie.scoring import f1_change, match_spans, score_documents

TEXT = "x" * 100


def S(i: str, label: str, s: int, e: int) -> GoldSpan:
    return GoldSpan(id=i, label=label, start=s, end=e)


def doc(spans, rels=()):
    return Document(
        name="d", text=TEXT, spans=list(spans), relations=[GoldRelation(entity=a, modifier=b) for a, b in rels]
    )


def test_strict_requires_exact_offsets_and_label():
    gold = doc([S("T1", "problem", 0, 10), S("T2", "problem", 20, 30), S("T3", "test", 40, 50)])
    pred = doc([S("P1", "problem", 0, 10), S("P2", "problem", 21, 30), S("P3", "drug", 40, 50)])
    r = score_documents([gold], {"d": pred}).as_dict()
    ent = r["strict"]["entities"]["overall"]
    assert (ent["tp"], ent["fp"], ent["fn"]) == (1, 2, 2)
    assert ent["precision"] == pytest.approx(1 / 3, abs=1e-4) and ent["recall"] == pytest.approx(1 / 3, abs=1e-4)
    rel = r["relaxed"]["entities"]["overall"]
    assert (rel["tp"], rel["fp"], rel["fn"]) == (2, 1, 1)  # 21-30 overlaps 20-30; drug != test
    assert r["relaxed"]["entities"]["per_label"]["problem"]["f1"] == 1.0
    assert r["relaxed"]["entities"]["per_label"]["test"]["fn"] == 1


def test_relaxed_is_one_to_one_longest_overlap_first():
    gold = [S("G1", "problem", 0, 10), S("G2", "problem", 8, 20)]
    pred = [S("P1", "problem", 5, 18)]
    # P1 overlaps G1 by 5 and G2 by 10: it must take G2, leaving G1 unmatched.
    assert match_spans(gold, pred, "relaxed") == {"P1": "G2"}
    # Two predictions inside one gold span: only one may match.
    pred2 = [S("P1", "problem", 0, 4), S("P2", "problem", 3, 9)]
    assert match_spans([gold[0]], pred2, "relaxed") == {"P2": "G1"}


def test_relations_need_both_arguments_matched():
    gold = doc(
        [S("T1", "problem", 10, 20), S("T2", "negation", 0, 6), S("T3", "bodyloc", 10, 14)],
        [("T1", "T2"), ("T1", "T3")],
    )
    pred = doc(
        [S("A", "problem", 10, 21), S("B", "negation", 0, 6), S("C", "bodyloc", 30, 34)],
        [("A", "B"), ("A", "C")],
    )
    r = score_documents([gold], {"d": pred}).as_dict()
    strict = r["strict"]["relations"]["overall"]
    assert (strict["tp"], strict["fp"], strict["fn"]) == (0, 2, 2)  # problem span is off by one
    relaxed = r["relaxed"]["relations"]["overall"]
    assert (relaxed["tp"], relaxed["fp"], relaxed["fn"]) == (1, 1, 1)  # bodyloc does not overlap
    assert r["relaxed"]["relations"]["per_label"]["problem:negation"]["tp"] == 1


def test_missing_prediction_counts_as_empty():
    gold = doc([S("T1", "drug", 0, 5)])
    r = score_documents([gold], {}).as_dict()
    assert r["strict"]["entities"]["overall"]["fn"] == 1
    assert r["strict"]["entities"]["overall"]["f1"] == 0.0


def test_duplicate_predictions_are_false_positives():
    gold = doc([S("T1", "drug", 0, 5)])
    pred = doc([S("A", "drug", 0, 5), S("B", "drug", 0, 5)])
    ent = score_documents([gold], {"d": pred}).as_dict()["strict"]["entities"]["overall"]
    assert (ent["tp"], ent["fp"], ent["fn"]) == (1, 1, 0)


def _named(name, spans):
    return Document(name=name, text=TEXT, spans=list(spans))


def test_f1_change_is_zero_with_a_zero_interval_for_the_same_predictions():
    gold = [_named(f"n{i}", [S("T1", "problem", 0, 5), S("T2", "drug", 10, 15)]) for i in range(6)]
    pred = {f"n{i}": _named(f"n{i}", [S("T1", "problem", 0, 5)]) for i in range(6)}
    change = f1_change(gold, pred, pred, "strict", "entities", resamples=200)
    assert (change.points, change.low, change.high, change.notes) == (0.0, 0.0, 0.0, 6)


def test_f1_change_measures_b_against_a_and_its_interval_brackets_it():
    gold = [_named(f"n{i}", [S("T1", "problem", 0, 5), S("T2", "drug", 10, 15)]) for i in range(10)]
    # A finds one of two entities in every note (F1 2/3); B finds both in half the notes and one in the rest
    a = {f"n{i}": _named(f"n{i}", [S("T1", "problem", 0, 5)]) for i in range(10)}
    b = {
        f"n{i}": _named(f"n{i}", [S("T1", "problem", 0, 5)] + ([S("T2", "drug", 10, 15)] if i % 2 else []))
        for i in range(10)
    }
    change = f1_change(gold, a, b, "strict", "entities", resamples=500)
    expected = 100 * (2 * 15 / (2 * 15 + 0 + 5) - 2 * 10 / (2 * 10 + 0 + 10))
    assert change.points == pytest.approx(expected, abs=0.01)
    assert 0 < change.low <= change.points <= change.high
    # paired: B never does worse than A on a note, so no resample can show B behind
    reverse = f1_change(gold, b, a, "strict", "entities", resamples=500)
    assert reverse.points == pytest.approx(-expected, abs=0.01) and reverse.high < 0


def test_f1_change_needs_notes():
    with pytest.raises(ValueError, match="no notes"):
        f1_change([], {}, {}, "strict", "entities")
