"""Signals from one fast-tier pass, computed from a hand-built NoteAnalysis, and OOD statistics."""

from __future__ import annotations

import re

import numpy as np
import pytest

from clinie.analysis import DecodedSpan, NoteAnalysis
from clinie.ood import OODStats
from clinie.windows import Sentence
from router import SIGNALS, compute_signals, risk

TEXT = "Pain is bad. No fever today. Take aspirin daily."
SURE_E = [0.98, 0.01, 0.01]
SURE_M = [0.99, 0.005, 0.005]
UNSURE_E = [0.40, 0.35, 0.25]  # sentence 1: the uncertain entity token ("fever")
HALF_M = [0.70, 0.20, 0.10]  # sentence 2: a moderately uncertain modifier token ("daily")


def tokens() -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\w+|\.", TEXT)]


def sentences() -> list[Sentence]:
    return [Sentence(start=0, end=12), Sentence(start=13, end=28), Sentence(start=29, end=len(TEXT))]


def analysis(with_lse: bool = False, embedding: np.ndarray | None = None) -> NoteAnalysis:
    offs = tokens()
    fever = next(i for i, (s, _) in enumerate(offs) if TEXT[s:].startswith("fever"))
    daily = next(i for i, (s, _) in enumerate(offs) if TEXT[s:].startswith("daily"))
    ent = np.array([UNSURE_E if i == fever else SURE_E for i in range(len(offs))], np.float32)
    mod = np.array([HALF_M if i == daily else SURE_M for i in range(len(offs))], np.float32)
    entity_lse = modifier_lse = None
    if with_lse:
        entity_lse = np.full(len(offs), 8.0, np.float32)
        entity_lse[fever] = 1.0  # energy -8 elsewhere, -1 at "fever": the highest
        modifier_lse = np.full(len(offs), 9.0, np.float32)
        modifier_lse[daily] = 3.0
    pain = DecodedSpan("problem", 0, 4, 0, 1, confidence=0.9, min_prob=0.9)
    aspirin_start = TEXT.index("aspirin")
    aspirin = DecodedSpan("drug", aspirin_start, aspirin_start + 7, 8, 9, confidence=0.97, min_prob=0.97)
    neg = DecodedSpan("negation", 13, 15, 3, 4, confidence=0.8, min_prob=0.8)
    return NoteAnalysis(
        note_id="n1",
        text=TEXT,
        sentences=sentences(),
        entities=[pain, aspirin],
        modifiers=[neg],
        relations=[(0, 0, 0.6)],
        token_offsets=offs,
        entity_probs=ent,
        modifier_probs=mod,
        embedding=np.zeros(4, np.float32) if embedding is None else embedding,
        pair_probs=[(0, 0, 0.6), (1, 0, 0.95)],
        entity_lse=entity_lse,
        modifier_lse=modifier_lse,
    )


def entropy(p: list[float]) -> float:
    a = np.array(p)
    return float(-(a * np.log(a)).sum())


def test_fixture_rows_are_distributions():
    a = analysis()
    assert np.allclose(a.entity_probs.sum(1), 1) and np.allclose(a.modifier_probs.sum(1), 1)
    assert [TEXT[s.start : s.end] for s in a.sentences] == ["Pain is bad.", "No fever today.", "Take aspirin daily."]


def test_one_value_per_sentence_and_known_names():
    sig = compute_signals(analysis(with_lse=True))
    assert sig.sentences == [(0, 12), (13, 28), (29, len(TEXT))]
    assert sig.sentence_chars == [12, 15, len(TEXT) - 29]
    assert set(sig.per_sentence) == {
        "min_token_prob",
        "mean_token_prob",
        "max_entropy",
        "mean_entropy",
        "min_margin",
        "max_energy",
        "min_span_confidence",
        "min_relation_margin",
    }
    for name, values in sig.per_sentence.items():
        assert values.shape == (3,), name
        assert name in SIGNALS and SIGNALS[name].scope == "sentence"
    assert set(sig.note) <= set(SIGNALS)
    assert set(sig.note) == set(sig.per_sentence)


def test_token_signals_single_out_the_uncertain_sentence():
    ps = compute_signals(analysis()).per_sentence
    mp = ps["min_token_prob"]
    assert mp[0] == pytest.approx(0.98, abs=1e-6)  # the less certain head at each token
    assert mp[1] == pytest.approx(0.40, abs=1e-6)
    assert mp[2] == pytest.approx(0.70, abs=1e-6)
    assert int(np.argmin(mp)) == 1
    ent = ps["max_entropy"]
    assert ent[0] == pytest.approx(entropy(SURE_E), abs=1e-5) and ent[0] < 0.15
    assert ent[1] == pytest.approx(entropy(UNSURE_E), abs=1e-5)
    assert int(np.argmax(ent)) == 1
    assert ps["min_margin"] == pytest.approx([0.97, 0.05, 0.5], abs=1e-6)
    # means lie between the sentence's worst token and a sure one
    assert ps["mean_token_prob"][0] == pytest.approx(0.98, abs=1e-6)
    assert 0.40 < ps["mean_token_prob"][1] < 0.98
    assert ps["mean_entropy"][1] < ps["max_entropy"][1]
    assert "max_energy" not in ps
    assert "max_energy" not in compute_signals(analysis()).note


def test_span_and_relation_signals():
    ps = compute_signals(analysis()).per_sentence
    assert ps["min_span_confidence"] == pytest.approx([0.9, 0.8, 0.97])
    # pair (pain, No) p=0.6 -> |2p-1| = 0.2 in sentence 0; (aspirin, No) p=0.95 -> 0.9 in sentence 2
    assert ps["min_relation_margin"] == pytest.approx([0.2, 1.0, 0.9])


def test_energy_from_logsumexp():
    sig = compute_signals(analysis(with_lse=True))
    energy = sig.per_sentence["max_energy"]
    assert energy == pytest.approx([-8.0, -1.0, -3.0])  # max(-entity_lse, -modifier_lse)
    assert sig.note["max_energy"] == pytest.approx(-1.0)


def test_note_aggregates_are_the_worst_sentence():
    a = analysis(with_lse=True)
    sig = compute_signals(a)
    for name, values in sig.per_sentence.items():
        if name.startswith("mean_"):
            continue
        worst = values.min() if SIGNALS[name].riskier == "lower" else values.max()
        assert sig.note[name] == pytest.approx(worst, abs=1e-4), name
        # risk() turns every signal so that higher is riskier
        assert risk(name, sig.note[name]) == pytest.approx(sig.sentence_risk(name).max(), abs=1e-4)
    # means are over all word-pieces of the note
    prob = np.minimum(a.entity_probs.max(1), a.modifier_probs.max(1))
    assert sig.note["mean_token_prob"] == pytest.approx(prob.mean(), abs=1e-4)


def test_sentence_without_tokens_gets_neutral_values():
    a = analysis(with_lse=True)
    keep = [i for i, (s, _) in enumerate(a.token_offsets) if s < 13]  # tokens of sentence 0 only
    a.token_offsets = [a.token_offsets[i] for i in keep]
    a.entity_probs, a.modifier_probs = a.entity_probs[keep], a.modifier_probs[keep]
    a.entity_lse, a.modifier_lse = a.entity_lse[keep], a.modifier_lse[keep]
    ps = compute_signals(a).per_sentence
    assert ps["min_token_prob"][1:] == pytest.approx([1.0, 1.0])
    assert ps["max_entropy"][1:] == pytest.approx([0.0, 0.0])
    assert ps["min_margin"][1:] == pytest.approx([1.0, 1.0])
    assert ps["max_energy"] == pytest.approx([-8.0, -8.0, -8.0])  # the note's most ordinary value


def test_note_without_tokens_has_only_span_signals():
    a = analysis()
    a.token_offsets = []
    a.entity_probs, a.modifier_probs = np.zeros((0, 3)), np.zeros((0, 3))
    sig = compute_signals(a)
    assert set(sig.per_sentence) == {"min_span_confidence", "min_relation_margin"}


def test_ood_only_with_stats_of_the_same_width():
    rng = np.random.default_rng(0)
    stats = OODStats.fit(rng.normal(size=(50, 4)))
    assert "ood_mahalanobis" not in compute_signals(analysis()).note
    near = compute_signals(analysis(embedding=np.zeros(4)), stats).note["ood_mahalanobis"]
    far = compute_signals(analysis(embedding=np.full(4, 5.0)), stats).note["ood_mahalanobis"]
    assert far > near
    assert far == pytest.approx(stats.score(np.full(4, 5.0)), abs=1e-4)
    assert "ood_mahalanobis" not in compute_signals(analysis(embedding=np.zeros(8)), stats).note
    assert "ood_mahalanobis" not in compute_signals(analysis(), stats).per_sentence


def test_every_signal_documents_its_direction():
    for name, spec in SIGNALS.items():
        assert spec.riskier in ("higher", "lower"), name
        assert risk(name, 2.0) == (2.0 if spec.riskier == "higher" else -2.0)
    assert SIGNALS["ood_mahalanobis"].scope == "note"


# --- OOD statistics ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian() -> tuple[np.ndarray, OODStats]:
    rng = np.random.default_rng(7)
    x = rng.normal(loc=2.0, scale=3.0, size=(300, 16))
    return x, OODStats.fit(x)


def test_training_points_score_lower_than_shifted_ones(gaussian):
    x, stats = gaussian
    assert stats.n_notes == 300
    assert 0.0 <= stats.shrinkage <= 1.0
    train = np.array([stats.score(r) for r in x])
    shifted = np.array([stats.score(r + 3 * 3.0) for r in x])  # 3 sd in every dimension
    assert train.mean() < shifted.mean()
    assert train.mean() == pytest.approx(1.0, abs=0.15)  # "as far as a typical training note"
    assert (shifted > stats.train_p95).mean() > 0.99
    assert stats.train_p50 == pytest.approx(np.quantile(train, 0.5))
    assert stats.train_p95 == pytest.approx(np.quantile(train, 0.95))


def test_fewer_notes_than_dimensions_is_still_finite():
    rng = np.random.default_rng(1)
    stats = OODStats.fit(rng.normal(size=(5, 32)))
    score = stats.score(rng.normal(size=32))
    assert np.isfinite(score) and score > 0


def test_save_load_round_trip(tmp_path, gaussian):
    x, stats = gaussian
    path = tmp_path / "ood_stats.npz"
    stats.save(path)
    loaded = OODStats.load(path)
    assert loaded.n_notes == stats.n_notes
    assert (loaded.shrinkage, loaded.train_p50, loaded.train_p95) == pytest.approx(
        (stats.shrinkage, stats.train_p50, stats.train_p95)
    )
    probe = np.vstack([x[:10], x[:10] + 9.0])
    assert [loaded.score(r) for r in probe] == pytest.approx([stats.score(r) for r in probe])


@pytest.mark.parametrize("bad", [np.zeros((1, 4)), np.zeros((0, 4)), np.zeros(4)])
def test_fit_needs_two_rows(bad):
    with pytest.raises(ValueError, match="at least two"):
        OODStats.fit(bad)


def test_compact_analysis_gives_the_same_signals_and_is_smaller():
    import pickle

    stats = OODStats.fit(np.random.default_rng(1).normal(size=(50, 4)))
    full = analysis(with_lse=True, embedding=np.full(4, 0.5, np.float32))
    small = full.compact()
    assert small.entity_probs is None and small.modifier_lse is None and small.evidence is not None
    a, b = compute_signals(full, stats), compute_signals(small, stats)
    assert a.note == b.note and a.sentences == b.sentences
    for name, values in a.per_sentence.items():
        assert np.array_equal(values, b.per_sentence[name]), name
    # what travels between deployments loses the [tokens, tags] matrices (3 tags here, 9 and 33 in
    # the shipped model): smaller even at this size
    assert len(pickle.dumps(small)) < len(pickle.dumps(full))
    bare = analysis()
    bare.entity_probs = None
    with pytest.raises(ValueError, match="evidence"):
        bare.token_evidence()
