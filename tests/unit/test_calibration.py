"""Confidence calibration: the numpy fits, the stored file, and the engine applying it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clinie.brat import Document, GoldRelation, GoldSpan
from clinie.calibration import (
    CALIBRATION_FILE,
    CalibrationError,
    CalibrationMap,
    ConfidenceCalibration,
    FitReport,
    expected_calibration_error,
    fit_isotonic,
    reliability_bins,
)
from deployments.fast_tier import features as F
from deployments.fast_tier.config import MANIFEST_NAME, EngineConfig, ModelManifest, SpanFloor, embedded_encoder_dir
from deployments.fast_tier.engine import FastTierEngine
from deployments.fast_tier.training.calibrate import MIN_SAMPLES, NoteScores, cross_fit, fit_calibration, label_note
from router.signals import compute_signals


def overconfident(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0.3, 1] that are right far less often than they claim (like the raw fast tier:
    0.85 is right about half the time)."""
    s = rng.uniform(0.3, 1.0, n)
    p_true = np.clip((s - 0.3) / 0.7, 0, 1) ** 2.5
    return s, (rng.random(n) < p_true).astype(np.float64)


# -- measures ---------------------------------------------------------------------------------


def test_ece_of_known_cases():
    assert expected_calibration_error([0.9] * 10, [1] * 5 + [0] * 5) == pytest.approx(0.4)
    assert expected_calibration_error([0.25, 0.75, 0.75, 0.75, 0.75], [0, 1, 1, 1, 0]) == pytest.approx(
        0.05
    )  # 1/5 * 0.25 + 4/5 * 0
    assert expected_calibration_error([], []) == 0.0
    bins = reliability_bins([0.0, 1.0, 0.55], [0, 1, 1])
    assert [b.count for b in bins] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]  # 1.0 falls in the last bin
    assert bins[5].accuracy == 1.0 and bins[1].mean_confidence is None
    with pytest.raises(ValueError, match="outcomes"):
        expected_calibration_error([0.5, 0.6], [1])


def test_pool_adjacent_violators_on_a_small_case():
    x, y = fit_isotonic([1, 2, 3, 4, 5], [1, 0, 1, 1, 0])
    # (1,0) violate -> 0.5, 0.5; then 1, then (1,0) -> 0.5 which violates 1 -> the last three pool to 2/3.
    m = CalibrationMap(method="isotonic", x=x, y=y, samples=5, positives=3)
    assert m(np.array([1, 2, 3, 4, 5])).tolist() == pytest.approx([0.5, 0.5, 2 / 3, 2 / 3, 2 / 3])
    # Equal scores get one value (their mean), not an order-dependent split.
    x, y = fit_isotonic([0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1])
    assert x == [0.5, 0.9] and y == pytest.approx([1 / 3, 1.0])


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_fit_on_miscalibrated_data_generalises_to_fresh_samples(method: str):
    rng = np.random.default_rng(0)
    s_fit, y_fit = overconfident(rng, 3000)
    s_new, y_new = overconfident(rng, 3000)
    raw = expected_calibration_error(s_new, y_new)
    m = CalibrationMap.fit(s_fit, y_fit, method)  # type: ignore[arg-type]
    after = expected_calibration_error(m(s_new), y_new)
    assert raw > 0.2
    assert after < 0.05 and after < raw / 4, (raw, after)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_maps_are_monotone_and_in_unit_interval(method: str):
    rng = np.random.default_rng(1)
    s, y = overconfident(rng, 500)
    m = CalibrationMap.fit(s, y, method)  # type: ignore[arg-type]
    grid = np.linspace(-0.5, 1.5, 2001)  # also outside the fitted range and outside [0, 1]
    out = m(grid)
    assert np.all(np.diff(out) >= -1e-12)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.isfinite(m(np.array([0.0, 1.0]))).all()  # saturated softmax scores stay finite


def test_platt_is_temperature_scaling_with_a_bias():
    rng = np.random.default_rng(2)
    s = rng.uniform(0.01, 0.99, 20000)
    logit = np.log(s / (1 - s))
    y = (rng.random(s.size) < 1 / (1 + np.exp(-(0.5 * logit - 0.7)))).astype(float)
    m = CalibrationMap.fit(s, y, "platt")
    assert m.a == pytest.approx(0.5, abs=0.05) and m.b == pytest.approx(-0.7, abs=0.06)


# -- the stored file ------------------------------------------------------------------------------


def _report() -> FitReport:
    return FitReport(notes=["a"], source="test", precision="int8", ece_before={}, ece_after_in_sample={})


def _calibration(model: str = "t@v1") -> ConfidenceCalibration:
    return ConfidenceCalibration(
        model=model,
        method="isotonic",
        maps={
            # raw 0.7 -> 0.35 (linear between the two breakpoints)
            "entity": CalibrationMap(method="isotonic", x=[0.0, 1.0], y=[0.0, 0.5], samples=100, positives=25),
            "modifier": CalibrationMap(method="platt", a=1.0, b=-1.0, samples=100, positives=40),
            # raw 0.9 -> 0.2 + 0.4 * 0.8 = 0.52
            "relation": CalibrationMap(method="isotonic", x=[0.5, 1.0], y=[0.2, 0.6], samples=50, positives=20),
        },
        fitted_on=_report(),
    )


def test_file_round_trip_and_missing_file(tmp_path: Path):
    cal = _calibration()
    cal.save(tmp_path / CALIBRATION_FILE)
    back = ConfidenceCalibration.for_model(tmp_path, "t@v1")
    assert back == cal
    assert back is not None and back.apply("entity", [0.7]).tolist() == pytest.approx([0.35])
    # No file: None, the documented fallback (raw scores), not an error.
    assert ConfidenceCalibration.for_model(tmp_path / "elsewhere", "t@v1") is None


def test_a_kind_without_map_keeps_raw_scores():
    cal = ConfidenceCalibration(model="m", method="isotonic", maps={}, fitted_on=_report())
    assert cal.apply("relation", [0.3, 0.9, 1.2]).tolist() == pytest.approx([0.3, 0.9, 1.0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read"),
        (json.dumps({"format": 1}), "model"),
        ("NON_MONOTONE", "maps.entity"),
        ("OTHER_MODEL", "fitted for other@v9"),
    ],
)
def test_bad_file_is_refused_with_a_clear_error(tmp_path: Path, content: str, message: str):
    path = tmp_path / CALIBRATION_FILE
    if content == "NON_MONOTONE":
        raw = json.loads(_calibration().model_dump_json())
        raw["maps"]["entity"]["y"] = [0.9, 0.1]
        content = json.dumps(raw)
    elif content == "OTHER_MODEL":
        content = _calibration("other@v9").model_dump_json()
    path.write_text(content)
    with pytest.raises(CalibrationError, match=message) as err:
        ConfidenceCalibration.for_model(tmp_path, "t@v1")
    assert str(path) in str(err.value)


# -- fitting on labelled notes ------------------------------------------------------------------


def _notes(n_notes: int, per_note: int, seed: int = 3) -> list[NoteScores]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_notes):
        note = NoteScores(f"n{i:02d}")
        for kind in ("entity", "modifier", "relation"):
            s, y = overconfident(rng, per_note if kind != "relation" else 1)
            note.scores[kind], note.correct[kind] = s, y  # type: ignore[index]
        out.append(note)
    return out


def test_fit_calibration_reports_held_out_ece_and_skips_thin_kinds():
    notes = _notes(20, 100)
    cal = fit_calibration(notes, "t@v1", "synthetic", method="isotonic")
    rep = cal.fitted_on
    assert set(cal.maps) == {"entity", "modifier"}  # 20 relations < MIN_SAMPLES
    assert "relation" in rep.skipped and str(MIN_SAMPLES) in rep.skipped["relation"]
    assert rep.notes == sorted(n.name for n in notes)
    for kind in ("entity", "modifier"):
        held = rep.held_out[kind]
        assert held.samples == 2000 and len(held.per_fold) == 2
        assert held.before > 0.2 and held.after < 0.06
        assert rep.ece_after_in_sample[kind] <= held.after + 1e-9  # in sample is the optimistic one
    # Entities and modifiers pooled: the span confidence a caller sees, the number the target is on.
    assert rep.held_out["span"].samples == 4000 and rep.held_out["span"].after < 0.05
    assert rep.ece_before["span"] > 0.2 and rep.ece_after_in_sample["span"] < 0.05
    # Cross-fitting never measures a note it fitted on: each held-out fold is half the notes.
    fit = cross_fit(notes)
    assert sorted(fit.raw["entity"].tolist()) == sorted(np.concatenate([n.scores["entity"] for n in notes]).tolist())


def test_label_note_uses_strict_match_and_raw_scores():
    text = "Patient denies chest pain."
    doc = Document(
        name="d",
        text=text,
        spans=[
            GoldSpan(id="T1", label="problem", start=15, end=25),
            GoldSpan(id="T2", label="negation", start=8, end=14),
        ],
        relations=[GoldRelation(entity="T1", modifier="T2")],
    )
    from clinie.analysis import DecodedSpan, NoteAnalysis

    ents = [
        DecodedSpan("problem", 15, 25, 2, 4, 0.3, 0.2, raw_confidence=0.8),  # exact: right
        DecodedSpan("problem", 21, 25, 3, 4, 0.9, 0.9),  # overlapping only: wrong under strict
    ]
    mods = [DecodedSpan("negation", 8, 14, 1, 2, 0.6, 0.6)]
    a = NoteAnalysis("d", text, [], ents, mods, [(0, 0, 0.4), (1, 0, 0.5)], [], np.zeros((0, 1)), np.zeros((0, 1)),
                     np.zeros(1), pair_probs=[(0, 0, 0.95), (1, 0, 0.7)])  # fmt: skip
    s = label_note(a, doc)
    assert s.scores["entity"].tolist() == [0.8, 0.9] and s.correct["entity"].tolist() == [1, 0]
    assert s.correct["modifier"].tolist() == [1]
    # Relations are scored on their raw probability (pair_probs), not the calibrated one.
    assert s.scores["relation"].tolist() == [0.95, 0.7] and s.correct["relation"].tolist() == [1, 0]


# -- the engine applies it ----------------------------------------------------------------------


TEXT = "Patient denies chest pain."


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A model directory with a real tokenizer and manifest; the networks are replaced by fixed
    backends below, so the test checks what the engine does with scores, not what a model learned."""
    shutil.copy(embedded_encoder_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    manifest = ModelManifest(
        name="t",
        version="v1",
        encoder="test",
        entity_tags=list(F.ENTITY_TAGS),
        modifier_tags=list(F.MODIFIER_TAGS),
        window_tokens=126,
        window_stride=32,
        relation_max_tokens=128,
        relation_context_chars=80,
        relation_threshold=0.5,
        hidden_size=4,
    )
    (tmp_path / MANIFEST_NAME).write_text(manifest.model_dump_json())
    return tmp_path


def _backends(model_dir: Path):
    tok = F.load_tokenizer(str(model_dir / "tokenizer.json"))
    pain, denies = tok.token_to_id("pain"), tok.token_to_id("denies")
    b_problem, b_negation = F.ENTITY_TAGS.index("B-problem"), F.MODIFIER_TAGS.index("B-negation")

    def tagger(ids: np.ndarray, mask: np.ndarray):
        ent = np.zeros((*ids.shape, len(F.ENTITY_TAGS)), np.float32)
        mod = np.zeros((*ids.shape, len(F.MODIFIER_TAGS)), np.float32)
        ent[..., 0] = mod[..., 0] = 1.0
        ent[ids == pain, 0], ent[ids == pain, b_problem] = 0.3, 0.7
        mod[ids == denies, 0], mod[ids == denies, b_negation] = 0.2, 0.8
        return ent, mod, np.zeros((len(ids), 4), np.float32), None, None, None

    def relation(ids, mask, e_pos, pair_batch, m_pos):
        return np.full(len(m_pos), 0.9, np.float32)

    return tagger, relation


def test_engine_reports_calibrated_confidences_and_signals_read_them(model_dir: Path):
    raw_engine = FastTierEngine(EngineConfig(model_dir=model_dir), backends=_backends(model_dir))
    assert raw_engine.calibration is None and raw_engine.calibration_status.startswith("uncalibrated")
    (raw,) = raw_engine.extract([("n", TEXT)])
    assert [(e.text, e.confidence) for e in raw.entities] == [("pain", pytest.approx(0.7))]
    assert [(m.text, m.confidence) for m in raw.modifiers] == [("denies", pytest.approx(0.8))]
    assert [r.confidence for r in raw.relations] == [pytest.approx(0.9)]

    _calibration().save(model_dir / CALIBRATION_FILE)
    every_span = SpanFloor(entity=0, modifier=0)
    engine = FastTierEngine(EngineConfig(model_dir=model_dir, span_floor=every_span), backends=_backends(model_dir))
    assert engine.calibration_status.startswith("calibrated")
    (a,) = engine.analyze([("n", TEXT)])
    (res,) = engine.extract([("n", TEXT)])
    mod_conf = 1 / (1 + np.exp(-(np.log(0.8 / 0.2) - 1.0)))
    assert [e.confidence for e in res.entities] == [pytest.approx(0.35, abs=1e-4)]
    assert [m.confidence for m in res.modifiers] == [pytest.approx(mod_conf, abs=1e-4)]
    assert [r.confidence for r in res.relations] == [pytest.approx(0.52, abs=1e-4)]
    # Same spans and relations as uncalibrated: calibration changes confidences, never decisions
    # (with no span floor: below).
    assert [(e.start, e.end) for e in res.entities] == [(e.start, e.end) for e in raw.entities]
    assert len(res.relations) == len(raw.relations)
    # The raw score stays available; the relation decision and margin keep the raw probability.
    assert a.calibrated and a.entities[0].raw_confidence == pytest.approx(0.7)
    assert a.pair_probs[0][2] == pytest.approx(0.9)
    # Routing reads the same confidences the result reports (the router alone computes signals).
    assert res.route.signals == {}
    assert compute_signals(a).note["min_span_confidence"] == pytest.approx(0.35, abs=1e-4)
    assert compute_signals(a).note["min_relation_margin"] == pytest.approx(0.8, abs=1e-4)

    off = FastTierEngine(EngineConfig(model_dir=model_dir, calibrate=False), backends=_backends(model_dir))
    (res_off,) = off.extract([("n", TEXT)])
    assert res_off.entities[0].confidence == pytest.approx(0.7) and "switched off" in off.calibration_status

    # The default span floor (entities at 0.40) does not report the entity calibrated to 0.35, nor
    # its relation; the modifier stays (no modifier floor by default).
    floored = FastTierEngine(EngineConfig(model_dir=model_dir), backends=_backends(model_dir))
    (res_floored,) = floored.extract([("n", TEXT)])
    assert SpanFloor().entity > 0.35
    assert res_floored.entities == [] and res_floored.relations == []
    assert [m.text for m in res_floored.modifiers] == ["denies"]


def test_engine_refuses_a_broken_calibration_file(model_dir: Path):
    (model_dir / CALIBRATION_FILE).write_text('{"format": 1, "model": "t@v1"')
    with pytest.raises(CalibrationError, match=CALIBRATION_FILE):
        FastTierEngine(EngineConfig(model_dir=model_dir), backends=_backends(model_dir))


def test_platt_on_a_score_that_ranks_backwards_falls_back_to_the_base_rate():
    rng = np.random.default_rng(4)
    s = rng.uniform(0.5, 1.0, 2000)
    y = (rng.random(s.size) < 1.2 - s).astype(float)  # higher score, less often right
    m = CalibrationMap.fit(s, y, "platt")
    out = m(np.array([0.5, 0.75, 1.0]))
    assert out == pytest.approx([y.mean()] * 3, abs=1e-3)  # monotone and honest: the base rate
    assert expected_calibration_error(m(s), y) < 0.2 < expected_calibration_error(s, y)


def test_few_samples_use_platt_instead_of_an_overfitting_isotonic_map():
    from deployments.fast_tier.training.calibrate import ISOTONIC_MIN_SAMPLES

    small = fit_calibration(_notes(4, 40), "t@v1", "synthetic", method="isotonic")
    assert 4 * 40 < ISOTONIC_MIN_SAMPLES and small.maps["entity"].method == "platt"
    large = fit_calibration(_notes(20, 40), "t@v1", "synthetic", method="isotonic")
    assert large.maps["entity"].method == "isotonic"
