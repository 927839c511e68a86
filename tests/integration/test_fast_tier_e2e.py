"""End to end on real parts: train a tiny fast tier on shared notes, export ONNX int8, extract, score.

Training runs once per module (about a minute on 2 cores); everything else reuses the model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clinie.brat import read_corpus
from clinie.schema import NoteError, NoteResult, is_allowed_pair
from deployments.fast_tier.config import EngineConfig, SpanFloor
from deployments.fast_tier.engine import FastTierEngine
from router import compute_signals

pytestmark = pytest.mark.slow

N_NOTES = 10
DEV = 2


@pytest.fixture(scope="module")
def model_dir(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> FastTierEngine:
    return FastTierEngine(EngineConfig(model_dir=model_dir))


def _check(result: NoteResult | NoteError, text: str) -> NoteResult:
    assert isinstance(result, NoteResult), result
    result.check_offsets(text)
    types = {s.id: s.type for s in [*result.entities, *result.modifiers]}
    for r in result.relations:
        assert is_allowed_pair(types[r.entity], types[r.modifier])
        assert 0.0 <= r.confidence <= 1.0
    return result


def test_artifacts_and_model_card(model_dir: Path):
    for name in ("tagger.onnx", "tagger.int8.onnx", "pair_head.npz", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    # relations come from the tagger's own pass: no second encoder is exported
    assert not list(model_dir.glob("relation*.onnx"))
    card = json.loads((model_dir / "model_card.json").read_text())
    data = card["data"]
    assert len(data["hash"]) == 16 and data["notes"] == N_NOTES
    assert len(data["dev_notes"]) == DEV and not set(data["dev_notes"]) & set(data["train_notes"])
    assert card["hyper_parameters"]["seed"] == 13
    assert "dev_scores_int8" in card and card["training"]["relation_candidates"] > 0
    assert card["training"]["relation_head"] == "span_pair" and card["training"]["relation_positive"] > 0
    # the same tag on any machine, so the card says which numerics trained it (`bf16: auto`)
    from deployments.fast_tier.training.train import native_bf16

    assert card["hyper_parameters"]["bf16"] == "auto" and card["training"]["bf16_autocast"] == native_bf16()
    # The int8 variant is the smaller file: weights are stored as 8-bit integers.
    assert (model_dir / "tagger.int8.onnx").stat().st_size < 0.5 * (model_dir / "tagger.onnx").stat().st_size


def test_training_fits_and_the_engine_applies_confidence_calibration(model_dir: Path, engine: FastTierEngine):
    """`train` fits the calibrator on the dev split; every reported confidence goes through it."""
    from clinie.calibration import CALIBRATION_FILE, ConfidenceCalibration

    card = json.loads((model_dir / "model_card.json").read_text())
    summary = card["confidence_calibration"]
    assert summary["status"] == "calibrated" and summary["notes"] == DEV
    cal = ConfidenceCalibration.for_model(model_dir, engine.manifest.tag)
    assert cal is not None and (model_dir / CALIBRATION_FILE).is_file()
    assert cal.fitted_on.notes == sorted(card["data"]["dev_notes"]) and not set(cal.fitted_on.notes) & set(
        card["data"]["train_notes"]
    )
    assert engine.calibration == cal and engine.calibration_status.startswith("calibrated")
    text = "Patient denies chest pain. Takes aspirin 81 mg daily for headache."
    (a,) = engine.analyze([("n", text)])
    spans = [(s, "entity") for s in a.entities] + [(s, "modifier") for s in a.modifiers]
    assert spans, "the tiny model finds something in this sentence"
    for s, kind in spans:
        assert s.raw_confidence is not None
        assert s.confidence == pytest.approx(float(cal.apply(kind, [s.raw_confidence])[0]))  # type: ignore[arg-type]
    (result,) = engine.extract([("n", text)])
    assert isinstance(result, NoteResult)
    assert [e.confidence for e in result.entities] == [round(s.confidence, 4) for s in a.entities]
    # the router's span signal reads the confidences the result reports
    assert compute_signals(a).note["min_span_confidence"] == round(min(s.confidence for s, _ in spans), 4)


def test_spans_under_the_floor_are_not_reported_nor_their_relations(model_dir: Path, train_dir: Path):
    """SpanFloor: an engine reports exactly the calibrated spans at or above its floor, and the
    relations among them with the same confidences; 0 reports every decoded span; raw scores
    (no calibration) are not floored."""
    notes = [(d.name, d.text) for d in read_corpus(train_dir)[:4]]

    def engine(floor: SpanFloor, calibrate: bool = True) -> FastTierEngine:
        return FastTierEngine(EngineConfig(model_dir=model_dir, span_floor=floor, calibrate=calibrate))

    floor = SpanFloor(entity=0.5, modifier=0.3)
    everything = engine(SpanFloor(entity=0, modifier=0)).analyze(notes)
    floored = engine(floor).analyze(notes)

    def spans(spans_, least: float = 0.0) -> list[tuple[str, int, int, float]]:
        return [(s.label, s.start, s.end, s.confidence) for s in spans_ if s.confidence >= least]

    def relations(a, least_entity: float = 0.0, least_modifier: float = 0.0) -> dict[tuple, float]:
        out = {}
        for e, m, p in a.relations:
            ent, mod = a.entities[e], a.modifiers[m]
            if ent.confidence >= least_entity and mod.confidence >= least_modifier:
                out[(ent.start, ent.end, mod.start, mod.end)] = p
        return out

    dropped = {"entities": 0, "modifiers": 0}
    for a, b in zip(everything, floored, strict=True):
        assert spans(b.entities) == spans(a.entities, floor.entity)
        assert spans(b.modifiers) == spans(a.modifiers, floor.modifier)
        assert relations(b) == pytest.approx(relations(a, floor.entity, floor.modifier))
        dropped["entities"] += len(a.entities) - len(b.entities)
        dropped["modifiers"] += len(a.modifiers) - len(b.modifiers)
        (result,) = engine(floor).extract([(a.note_id, a.text)])
        assert isinstance(result, NoteResult) and len(result.entities) == len(b.entities)
    assert dropped["entities"] and dropped["modifiers"], dropped  # the tiny model is unsure of some of each
    raw = engine(floor, calibrate=False).analyze(notes)
    assert [len(a.entities) for a in raw] == [len(a.entities) for a in everything]


def test_cli_extract_then_evaluate_shows_learning(model_dir: Path, train_dir: Path, tmp_path: Path):
    card = json.loads((model_dir / "model_card.json").read_text())
    gold = tmp_path / "gold"
    gold.mkdir()
    for name in card["data"]["train_notes"]:
        for ext in (".txt", ".ann"):
            (gold / f"{name}{ext}").write_bytes((train_dir / f"{name}{ext}").read_bytes())
    pred = tmp_path / "pred.jsonl"
    cli = [sys.executable, "-m", "serve_app.cli"]
    run = subprocess.run(
        [*cli, "extract", str(gold), "--model", str(model_dir), "--policy", "fast-only", "-o", str(pred)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(x) for x in pred.read_text().splitlines()]
    assert [x["note_id"] for x in lines] == sorted(card["data"]["train_notes"])
    for line in lines:
        text = (gold / f"{line['note_id']}.txt").read_text(encoding="utf-8")
        result = _check(NoteResult.model_validate(line), text)
        assert result.route.reason == "policy:fast-only" and result.models["bert"]
    run = subprocess.run([*cli, "evaluate", "--gold", str(gold), "--pred", str(pred)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    scores = json.loads(run.stdout)
    # Predicting nothing scores 0; a model that learned from these notes is far above that.
    assert scores["relaxed"]["entities"]["overall"]["f1"] > 0.5, scores["relaxed"]["entities"]["overall"]
    assert scores["strict"]["entities"]["overall"]["f1"] > 0.3
    assert scores["relaxed"]["modifiers"]["overall"]["f1"] > 0.2
    assert scores["relaxed"]["relations"]["overall"]["tp"] > 0


def test_bad_input_is_refused_by_name(engine: FastTierEngine):
    notes = [
        ("empty", ""),
        ("blank", " \n\t\r\n "),
        ("huge", "a" * (engine.cfg.max_note_chars + 1)),
        ("surrogate", "pain \ud800 here"),
        ("not-a-string", 42),
        ("fine", "Denies chest pain."),
    ]
    results = engine.extract(notes)
    codes = [r.error.code if isinstance(r, NoteError) else "ok" for r in results]
    assert codes == ["empty_text", "empty_text", "note_too_long", "invalid_text", "invalid_text", "ok"]
    assert [r.note_id for r in results] == [n for n, _ in notes]
    for r in results[:-1]:
        assert "pain" not in r.error.message and "aaaa" not in r.error.message


@pytest.mark.parametrize(
    "text",
    [
        "The weather was pleasant and the garden was green.",  # nothing clinical in it
        "Café patient, BP ≥ 140/90 😀, denies chest pain.\r\nAspirin 81 mg p.o. daily.\r\n",
        "Denies\x00 fever\x07 or\x1b chills.\u200b Severe\u00a0headache.\tNo rash.",
        "ＦＵＬＬＷＩＤＴＨ pain. İstanbul visit; ﬁbrosis noted.",
    ],
)
def test_unusual_text_keeps_exact_offsets(engine: FastTierEngine, text: str):
    (result,) = engine.extract([("u", text)])
    _check(result, text)


def test_long_note_is_windowed_not_truncated(engine: FastTierEngine, train_dir: Path):
    doc = read_corpus(train_dir)[0]
    (single,) = engine.extract([("one", doc.text)])
    copies = 12  # ~50k characters, hundreds of windows
    text = "\n".join([doc.text] * copies)
    (long,) = engine.extract([("long", text)])
    long = _check(long, text)
    single = _check(single, doc.text)
    assert len(long.entities) >= 0.9 * copies * len(single.entities)
    # The last copy is reached: spans exist in its range.
    last_copy = len(text) - len(doc.text)
    assert any(e.start >= last_copy for e in long.entities)


def test_a_notes_answer_does_not_depend_on_the_notes_sent_with_it(engine: FastTierEngine, train_dir: Path):
    """The int8 graph quantizes activations with one scale per batch, so windows of different
    notes are never batched together: a note answers the same alone, with others (the CLI over a
    folder, a replica's `@serve.batch`) and in another order, to the last digit of each confidence."""
    assert engine.cfg.precision == "int8"
    docs = read_corpus(train_dir)[:5]
    notes = [(d.name, d.text) for d in docs]
    texts = dict(notes)

    def answer(result: NoteResult | NoteError) -> dict:
        assert isinstance(result, NoteResult) and result.note_id is not None
        return _check(result, texts[result.note_id]).model_dump(exclude={"timings_ms"})

    alone = [answer(engine.extract([n])[0]) for n in notes]
    together = [answer(r) for r in engine.extract(notes)]
    reverse = [answer(r) for r in engine.extract(notes[::-1])][::-1]
    assert alone == together == reverse
    assert any(a["entities"] for a in alone)


def test_non_utf8_file_and_mixed_batch_via_cli(model_dir: Path, tmp_path: Path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "good.txt").write_text("Patient denies chest pain. Takes aspirin daily.", encoding="utf-8")
    (notes / "latin1.txt").write_bytes("Caf\xe9 pain".encode("latin-1"))
    (notes / "empty.txt").write_text("")
    run = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "extract", str(notes), "--model", str(model_dir), "-q"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    out = {json.loads(x)["note_id"]: json.loads(x) for x in run.stdout.splitlines()}
    assert out["latin1"]["error"]["code"] == "invalid_encoding"
    assert out["empty"]["error"]["code"] == "empty_text"
    assert "entities" in out["good"]


def test_the_marker_relation_path_still_trains_exports_and_extracts(train_dir: Path, tmp_path_factory):
    """`relation_head="markers"` (the two-pass path, kept for comparison) end to end, tiny."""
    from deployments.fast_tier.config import TrainConfig
    from deployments.fast_tier.training.train import train

    out = tmp_path_factory.mktemp("markers") / "model"
    cfg = TrainConfig(
        data_dir=train_dir, output_dir=out, max_notes=6, dev_size=1, relation_head="markers", max_steps=25
    )
    model_dir = train(cfg)
    assert (model_dir / "relation.int8.onnx").is_file() and not (model_dir / "pair_head.npz").exists()
    engine = FastTierEngine(EngineConfig(model_dir=model_dir))
    assert engine.manifest.relation_head == "markers" and engine.pair_head is None
    text = "Patient denies chest pain. Takes aspirin 81 mg daily for headache."
    (result,) = engine.extract([("n", text)])
    _check(result, text)
    (a,) = engine.analyze([("n", text)])
    assert all(0.0 <= p <= 1.0 for _, _, p in a.pair_probs)


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _widest_int8_weight(path: Path) -> int:
    """The largest |value| among a graph's int8 initializers (8-bit weights reach 127, 7-bit 64)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return max(
        int(abs(numpy_helper.to_array(i).astype(np.int32)).max(initial=0))
        for i in graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    )


def test_graphs_use_eager_attention_and_older_exports_are_upgraded(
    model_dir: Path, engine: FastTierEngine, train_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Fresh exports carry the plain masked softmax; a model exported from PyTorch's SDPA (its
    `Where`/`IsNaN` guard in the graph) is re-exported once by `upgrade_model`, from its saved
    weights, and extracts the same spans afterwards."""
    import shutil

    from deployments.fast_tier import default
    from deployments.fast_tier.config import QUANT_RECIPE, ModelManifest
    from deployments.fast_tier.training import export

    def manifest(d: Path) -> ModelManifest:
        return ModelManifest.model_validate_json((d / "fast_tier.json").read_text())

    assert manifest(model_dir).graph_attention == "eager"
    assert "IsNaN" not in _ops(model_dir / "tagger.int8.onnx")

    old = tmp_path / "model"
    shutil.copytree(model_dir, old)
    # what an earlier version exported: SDPA attention, 8-bit int8 weights (quantization recipe v2)
    full_range = export.QuantOptions(reduce_range=False)
    real_quantize = export.quantize
    monkeypatch.setattr(export, "GRAPH_ATTENTION", "sdpa")
    monkeypatch.setattr(export, "QUANT_RECIPE", "dynamic-qint8-per-channel-first-layer-fp32-v2")
    monkeypatch.setattr(export, "quantize", lambda src, dst: real_quantize(src, dst, full_range))
    export.reexport(old)
    assert manifest(old).graph_attention == "sdpa" and "IsNaN" in _ops(old / "tagger.int8.onnx")
    assert _widest_int8_weight(old / "tagger.int8.onnx") == 127
    monkeypatch.undo()

    # also without the OOD statistics and the calibration a still older version did not write
    for name in ("ood_stats.npz", "confidence_calibration.json"):
        (old / name).unlink()
    default.upgrade_model(old, train_dir)
    assert manifest(old).graph_attention == "eager" and "IsNaN" not in _ops(old / "tagger.int8.onnx")
    assert manifest(old).quantization == QUANT_RECIPE and _widest_int8_weight(old / "tagger.int8.onnx") <= 64
    assert (old / "ood_stats.npz").is_file() and (old / "confidence_calibration.json").is_file()
    assert manifest(old).tag == manifest(model_dir).tag  # no weight changed
    assert not (old / ".reexport").exists()  # written aside, moved in, cleaned up
    fp32 = old / "tagger.onnx"
    fp32.unlink()  # a model built without fp32 graphs is not given one by a re-export
    export.reexport(old)
    assert not fp32.exists() and (old / "tagger.int8.onnx").is_file()
    text = read_corpus(train_dir)[0].text
    (before,) = engine.extract([("n", text)])
    (after,) = FastTierEngine(EngineConfig(model_dir=old)).extract([("n", text)])
    spans = lambda r: [(e.type, e.start, e.end) for e in [*_check(r, text).entities, *r.modifiers]]  # noqa: E731
    assert spans(after) == spans(before)


def test_a_model_trained_on_every_note_serves_its_recipes_measurement(
    train_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The default is fitted on every note (no dev notes of its own): it takes the dev scores and the
    calibration of the same settings trained on the train split (deployments/fast_tier/recipe.py),
    and reports calibrated confidences through them. Other settings: uncalibrated, saying why."""
    from clinie.brat import corpus_hash
    from clinie.calibration import CALIBRATION_FILE, ConfidenceCalibration
    from deployments.fast_tier.config import TrainConfig
    from deployments.fast_tier.recipe import recipe_of
    from deployments.fast_tier.training import train as training
    from serve_app.cli import _model_summary

    settings = {"data_dir": train_dir, "max_notes": 6, "dev_size": 2, "tagger_epochs": 2}
    held_cfg = TrainConfig(**settings, output_dir=tmp_path / "held")
    held = training.train(held_cfg)
    data_hash = corpus_hash(read_corpus(train_dir)[:6])
    recipe = recipe_of(held, held_cfg, data_hash)
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(recipe.model_dump_json())
    # the committed file measures the real default recipe; this test's tiny recipe is measured above
    monkeypatch.setattr("deployments.fast_tier.recipe.RECIPE_FILE", recipe_file)
    every = training.train(TrainConfig(**settings, split="all", steps_of_train_split=True, output_dir=tmp_path / "all"))
    other = training.train(TrainConfig(**settings, split="all", seed=14, output_dir=tmp_path / "other"))

    card = json.loads((every / "model_card.json").read_text())
    held_card = json.loads((held / "model_card.json").read_text())
    assert card["data"]["dev_notes"] == [] and len(card["data"]["train_notes"]) == 6
    assert "dev_scores_int8" not in card and card["model"] != held_card["model"]
    # all 6 notes' windows, in the steps the held-out model took over its 4 (the first run's budget)
    assert card["training"]["tagger_windows"] > held_card["training"]["tagger_windows"]
    assert card["training"]["tagger_steps"] == held_card["training"]["tagger_steps"]
    assert card["recipe"]["measured_model"] == held_card["model"]
    assert card["recipe"]["dev_scores_int8"] == recipe.dev_scores_int8
    assert card["confidence_calibration"]["transferred_from"] == held_card["model"]
    cal = ConfidenceCalibration.for_model(every, card["model"])  # fitted for the held-out model, named for this one
    assert cal is not None and cal.transferred_from == held_card["model"]
    assert cal.maps == ConfidenceCalibration.load(held / CALIBRATION_FILE).maps
    engine = FastTierEngine(EngineConfig(model_dir=every))
    assert engine.calibration == cal
    (a,) = engine.analyze([("n", "Patient denies chest pain. Takes aspirin 81 mg daily for headache.")])
    for s in a.entities:
        assert s.raw_confidence is not None
        assert s.confidence == pytest.approx(float(cal.apply("entity", [s.raw_confidence])[0]))
    summary = _model_summary(every)
    assert summary["recipe_dev_scores"] == recipe.dev_scores_int8 and "dev_scores" not in summary
    assert held_card["model"] in summary["recipe_measured_on"]

    # the int8 export changes (a model of the old quantization recipe) and the recipe is measured
    # again: re-exported once on first use, the model takes the new measurement's scores and maps
    from deployments.fast_tier import default
    from deployments.fast_tier.config import QUANT_RECIPE, ModelManifest

    remeasured = recipe.model_copy(update={"dev_scores_int8": {k: v / 2 for k, v in recipe.dev_scores_int8.items()}})
    recipe_file.write_text(remeasured.model_dump_json())
    manifest_file = every / "fast_tier.json"
    old_manifest = ModelManifest.model_validate_json(manifest_file.read_text())
    manifest_file.write_text(old_manifest.model_copy(update={"quantization": "an-older-recipe"}).model_dump_json())
    default.upgrade_model(every, train_dir)
    assert ModelManifest.model_validate_json(manifest_file.read_text()).quantization == QUANT_RECIPE
    card = json.loads((every / "model_card.json").read_text())
    assert card["recipe"]["dev_scores_int8"] == remeasured.dev_scores_int8
    assert card["confidence_calibration"]["transferred_from"] == held_card["model"]
    assert ConfidenceCalibration.for_model(every, card["model"]) is not None

    # measured again with the export unchanged (e.g. a new decoding default): the scores and the
    # maps come together, on first use, and a current model is then left as it is
    from clinie.calibration import CalibrationMap

    entity_map = CalibrationMap.fit([0.2, 0.4, 0.6, 0.8], [0, 0, 1, 1], method="platt")
    maps = {**remeasured.calibration.maps, "entity": entity_map}
    again = remeasured.model_copy(
        update={
            "dev_scores_int8": {k: v / 3 for k, v in recipe.dev_scores_int8.items()},
            "calibration": remeasured.calibration.model_copy(update={"maps": maps}),
        }
    )
    recipe_file.write_text(again.model_dump_json())
    default.upgrade_model(every, train_dir)
    card = json.loads((every / "model_card.json").read_text())
    assert card["recipe"] == again.card_section()
    cal = ConfidenceCalibration.for_model(every, card["model"])
    assert cal is not None and cal.transferred_from == held_card["model"]
    assert cal.maps["entity"] == entity_map and cal.maps == maps
    assert card["confidence_calibration"]["maps"]["entity"] == "platt"
    before = {f: (every / f).read_bytes() for f in ("model_card.json", CALIBRATION_FILE)}
    default.upgrade_model(every, train_dir)
    assert {f: (every / f).read_bytes() for f in before} == before

    # another seed is another recipe: nothing transferred, and the card says why
    other_card = json.loads((other / "model_card.json").read_text())
    assert not (other / CALIBRATION_FILE).exists() and "recipe" not in other_card
    assert other_card["training"]["tagger_steps"] > held_card["training"]["tagger_steps"]  # epochs of all 6
    assert other_card["confidence_calibration"]["status"] == "uncalibrated"
    assert "seed" in other_card["confidence_calibration"]["reason"]


def test_a_card_scored_at_another_span_floor_is_scored_again(model_dir: Path, train_dir: Path, tmp_path: Path):
    """`upgrade_model` scores a card's dev notes again when they were scored at another span floor
    than the engine's default (or before floors existed); a current card is left alone, and a
    quoted recipe measurement is not this model's to replace (its calibration is its own)."""
    import shutil

    from deployments.fast_tier import default
    from deployments.fast_tier.training.train import evaluate_dir

    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    card_path = old / "model_card.json"
    card = json.loads(card_path.read_text())
    assert card["dev_scores_span_floor"] == SpanFloor().model_dump()  # as `train` writes it
    dev_docs = [d for d in read_corpus(train_dir) if d.name in set(card["data"]["dev_notes"])]
    want = json.loads(json.dumps(evaluate_dir(old, dev_docs, "int8")))

    # a card of before the floor: the scores of every decoded span, and no floor named
    del card["dev_scores_span_floor"]
    card["dev_scores_int8"] = json.loads(json.dumps(evaluate_dir(old, dev_docs, "int8") | {"stale": True}))
    card_path.write_text(json.dumps(card))

    default.upgrade_model(old, train_dir)
    card = json.loads(card_path.read_text())
    assert card["dev_scores_span_floor"] == SpanFloor().model_dump()
    assert card["dev_scores_int8"] == want

    card["recipe"] = {"measured_model": "clinie-fast@other", "dev_scores_int8": {}}
    card_path.write_text(json.dumps(card))
    before = card_path.read_text()
    default.upgrade_model(old, train_dir)
    assert card_path.read_text() == before
