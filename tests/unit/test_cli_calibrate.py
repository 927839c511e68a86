"""`clinie calibrate`: argument errors exit 2 before any model is loaded; the written policies validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clinie.brat import Document, write_document
from clinie.paths import DEFAULT_POLICIES
from router import PolicyConfigError, Router, load_router_config, parse_router_config
from serve_app import calibrate
from serve_app.calibrate import CalibrationError, calibrated_policies
from serve_app.cli import main


@pytest.fixture(autouse=True)
def _no_model(monkeypatch: pytest.MonkeyPatch):
    """Any path that reached the model would build the default one (minutes): fail instead."""

    def refuse(*_a, **_k):
        raise AssertionError("calibrate argument errors must be refused before loading a model")

    monkeypatch.setattr("deployments.fast_tier.default.resolve_model_dir", refuse)


def _gold(tmp_path: Path) -> Path:
    d = tmp_path / "gold"
    write_document(Document(name="n1", text="Denies chest pain.", spans=[]), d)
    return d


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["calibrate", *argv])
    return code, capsys.readouterr().err


def test_unknown_signal(tmp_path: Path, capsys):
    out = str(tmp_path / "p.yaml")
    code, err = _run(capsys, "--gold", str(_gold(tmp_path)), "--signal", "nope", "--target-rate", "0.2", "-o", out)
    assert code == 2 and "unknown signal 'nope'" in err and "min_token_prob" in err
    code, err = _run(
        capsys, "--gold", str(_gold(tmp_path)), "--signal", "ood_mahalanobis", "--target-rate", "0.2", "-o", out
    )
    assert code == 2 and "note-level" in err
    assert not Path(out).exists()


def test_missing_or_empty_gold_folder(tmp_path: Path, capsys):
    out = str(tmp_path / "p.yaml")
    code, err = _run(capsys, "--gold", str(tmp_path / "nope"), "--target-rate", "0.2", "-o", out)
    assert code == 2 and "brat folder not found" in err
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, "--gold", str(tmp_path / "empty"), "--target-rate", "0.2", "-o", out)
    assert code == 2 and "no .txt notes" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-rate", "1.5"], "--target-rate must be within 0..1"),
        (["--target-f1", "0.8"], "--target-f1 needs --llm-pred"),
        (["--target-f1", "0.8", "--llm-pred", "/nonexistent.jsonl"], "LLM predictions file not found"),
        (["--target-rate", "0.2", "--llm-pred", "x.jsonl"], "LLM predictions file not found"),
        (["--llm-pred", "/nonexistent.jsonl"], "LLM predictions file not found"),
        (["--target-rate", "0.2", "--min-gain-per-cost", "-1"], "--min-gain-per-cost must not be negative"),
        (["--target-rate", "0.2", "--margin-se", "-1"], "--margin-se must not be negative"),
        (["--target-rate", "0.2", "--buckets", "0"], "--buckets must be at least 1"),
        (["--target-rate", "0.2", "--gain-metrics", "relaxed_entities,f1"], "unknown --gain-metrics F1 'f1'"),
        (["--budget-per-minute", "1000"], "needs --notes-per-minute"),
        (["--budget-per-minute", "1000", "--notes-per-minute", "10", "--unit", "note"], "--unit note goes with"),
        (["--target-rate", "0.2", "--base", "/nonexistent.yaml"], "cannot read policy file"),
    ],
)
def test_argument_errors_exit_2(tmp_path: Path, capsys, args: list[str], message: str):
    code, err = _run(capsys, "--gold", str(_gold(tmp_path)), *args, "-o", str(tmp_path / "p.yaml"))
    assert code == 2 and message in err and "Traceback" not in err


def test_output_must_be_yaml_and_target_is_required(tmp_path: Path, capsys):
    code, err = _run(capsys, "--gold", str(_gold(tmp_path)), "--target-rate", "0.2", "-o", str(tmp_path / "p.json"))
    assert code == 2 and ".yaml" in err
    # a threshold target or the LLM predictions (for the gain table) is required
    code, err = _run(capsys, "--gold", str(_gold(tmp_path)), "-o", str(tmp_path / "p.yaml"))
    assert code == 2 and "--target-rate" in err and "--llm-pred" in err
    with pytest.raises(SystemExit) as exc:  # argparse: the targets exclude each other
        main(
            ["calibrate", "--gold", str(_gold(tmp_path)), "--target-rate", "0.2", "--target-f1", "0.5", "-o", "p.yaml"]
        )
    assert exc.value.code == 2


def test_gain_policies_validate_keep_the_others_and_record_the_models():
    base = yaml.safe_load(DEFAULT_POLICIES.read_text())
    spec = {
        "kind": "gain",
        "signal": "min_margin",
        "min_gain_per_cost": 0.0,
        "margin_se": 1.0,
        "metrics": ["relaxed_entities"],
        "buckets": [{"upper": 0.2, "gain": 0.3, "se": 0.01, "sentences": 60}, {"upper": None, "gain": -0.1}],
    }
    ids = {"fast": "clinie-fast@0123abcd", "llm": "Meta-Llama-3-8B-Instruct+lora:sft", "data": "dev"}
    raw, budget = calibrate.gain_policies(base, spec, ids)
    cfg = parse_router_config(raw)
    assert cfg.default_policy == "default" and raw["policies"]["default"] == {
        "kind": "budget",
        "inner": "gain",
        **budget,
    }
    assert raw["policies"]["gain"] == spec
    assert raw["policies"]["calibrated"] == base["policies"]["calibrated"]  # the threshold policy stays
    assert cfg.calibrated_for is not None and cfg.calibrated_for.llm == ids["llm"]
    r = Router(cfg)
    r.set_running_models(fast=ids["fast"], llm=ids["llm"])
    assert r.model_check()["match"]
    with pytest.raises(PolicyConfigError, match=r"^calibrated_for\.fast:"):
        parse_router_config(calibrate.gain_policies(base, spec, {**ids, "fast": "no version"})[0])


def test_llm_model_id_comes_from_the_predictions():
    from clinie.schema import NoteResult, Route

    def result(model: str) -> NoteResult:
        return NoteResult(note_id="n", route=Route(tier="llm", escalated=True, reason=""), models={"llm": model})

    assert calibrate.llm_model_id({"a": result("m1"), "b": result("m1")}, None) == "m1"
    assert calibrate.llm_model_id({"a": result("m1")}, "explicit") == "explicit"
    with pytest.raises(CalibrationError, match="--llm-model-id"):
        calibrate.llm_model_id({"a": result("m1"), "b": result("m2")}, None)


def test_calibrated_policies_validate_and_keep_the_base_budget(tmp_path: Path):
    base = yaml.safe_load(DEFAULT_POLICIES.read_text())
    base["policies"]["extra"] = {"kind": "threshold", "signal": "min_margin", "threshold": 0.1}
    raw, budget = calibrated_policies(base, "max_entropy", 0.42, "sentence")
    cfg = parse_router_config(raw)
    assert cfg.default_policy == "default"
    assert raw["policies"]["calibrated"] == {
        "kind": "threshold",
        "signal": "max_entropy",
        "threshold": 0.42,
        "scope": "sentence",
    }
    assert budget == {k: base["policies"]["default"][k] for k in ("rate_per_minute", "burst")}
    assert raw["policies"]["default"] == {"kind": "budget", "inner": "calibrated", **budget}
    assert raw["policies"]["extra"] == base["policies"]["extra"]  # the base's other policies stay
    Router(cfg)
    raw2, budget2 = calibrated_policies({"policies": {}}, "min_margin", 0.1, "note", budget_per_minute=5000)
    assert budget2["rate_per_minute"] == 5000 and parse_router_config(raw2).default_policy == "default"
    path = tmp_path / "p.yaml"
    path.write_text("# header\n" + yaml.safe_dump(raw, sort_keys=False))
    assert load_router_config(path).policies["calibrated"]["threshold"] == 0.42


# --- the whole command on a stand-in fast tier (no model is loaded) ---------------------------------


def _fake_engine_cls(low_prob_sentence: int):
    """A fast tier whose pass over a note is made up: every whitespace token is one word-piece, the
    tagger is unsure (0.2) in sentence `low_prob_sentence` and sure (0.95) elsewhere, and it finds
    the entity "chest pain" only."""
    import re

    import numpy as np

    from clinie.analysis import DecodedSpan, NoteAnalysis, analysis_to_result
    from clinie.windows import split_sentences

    class FakeEngine:
        model_tag = "clinie-fast@fake0123"

        def __init__(self, cfg):
            self.cfg = cfg

        def analyze(self, notes, progress=False):
            out = []
            for note_id, text in notes:
                sents = split_sentences(text)
                offsets = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
                probs = []
                for s, _ in offsets:
                    i = next(k for k, x in enumerate(sents) if x.start <= s < x.end)
                    probs.append(0.2 if i == low_prob_sentence else 0.95)
                p = np.array(probs)[:, None]
                ent = np.hstack([p, np.repeat((1 - p) / 8, 8, axis=1)])
                mod = np.hstack([np.full((len(p), 1), 0.99), np.full((len(p), 32), 0.01 / 32)])
                start = text.find("chest pain")
                ents = [DecodedSpan("problem", start, start + 10, 1, 3, 0.9, 0.9)] if start >= 0 else []
                out.append(
                    NoteAnalysis(
                        note_id, text, sents, ents, [], [], offsets, ent, mod, np.zeros(4), model_tag=self.model_tag
                    )
                )
            return out

        def to_result(self, a, route):
            return analysis_to_result(a, route)

    return FakeEngine


def test_calibrate_with_llm_predictions_writes_a_gain_default(tmp_path: Path, capsys, monkeypatch):
    import json

    from clinie.brat import GoldSpan
    from clinie.schema import EntitySpan, NoteResult, Route

    gold = tmp_path / "gold"
    text = "Denies chest pain. Takes aspirin daily. Cough today."
    spans = [
        GoldSpan(id="T1", label="problem", start=7, end=17),
        GoldSpan(id="T2", label="drug", start=25, end=32),
        GoldSpan(id="T3", label="problem", start=40, end=45),
    ]
    names = [f"n{i}" for i in range(4)]
    for n in names:
        write_document(Document(name=n, text=text, spans=spans), gold)
    # the LLM finds aspirin (in the sentence the fast tier is unsure of) and nothing else
    llm = NoteResult(
        note_id="x",
        entities=[EntitySpan(id="T1", type="drug", start=25, end=32, text="aspirin", confidence=0.8)],
        route=Route(tier="llm", escalated=True, reason="policy:llm-only"),
        models={"llm": "smollm2-135m-instruct-v2"},
    )
    pred = tmp_path / "llm.jsonl"
    pred.write_text("".join(json.dumps({**llm.model_dump(mode="json"), "note_id": n}) + "\n" for n in names))
    monkeypatch.setattr("deployments.fast_tier.default.resolve_model_dir", lambda *_a: tmp_path)
    monkeypatch.setattr("deployments.fast_tier.engine.FastTierEngine", _fake_engine_cls(low_prob_sentence=1))
    out = tmp_path / "p.yaml"
    code = main(
        [
            "calibrate",
            "--gold",
            str(gold),
            "--llm-pred",
            str(pred),
            "--buckets",
            "2",
            "--margin-se",
            "0",
            "-o",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    cfg = load_router_config(out)
    assert cfg.default_policy == "default" and cfg.policies["default"]["inner"] == "gain"
    assert cfg.calibrated_for is not None
    assert (cfg.calibrated_for.fast, cfg.calibrated_for.llm) == ("clinie-fast@fake0123", "smollm2-135m-instruct-v2")
    buckets = cfg.policies["gain"]["buckets"]
    assert len(buckets) == 2 and buckets[0]["gain"] > 0 > buckets[1]["gain"]  # unsure sentences gain
    assert summary["gain_buckets"] == buckets
    assert "calibrated" in cfg.policies  # the base's threshold policy stays
    header = out.read_text().split("policies:")[0]
    assert "gain" in header and "smollm2-135m-instruct-v2" in header
    # the router escalates the unsure sentence once told the calibrated models run, not before
    import numpy as np

    from router import NoteSignals

    sig = NoteSignals(
        sentences=[(0, 18), (19, 39)], sentence_chars=[18, 20], per_sentence={"min_token_prob": np.array([0.95, 0.2])}
    )
    r = Router(cfg)
    assert r.decide(sig).reason == "uncalibrated_models"
    r.set_running_models(fast="clinie-fast@fake0123", llm="smollm2-135m-instruct-v2")
    assert r.decide(sig).sentences == [1]


def test_calibrate_when_the_llm_never_helps_says_so(tmp_path: Path, capsys, monkeypatch):
    import json

    from clinie.brat import GoldSpan
    from clinie.schema import NoteResult, Route

    gold = tmp_path / "gold"
    text = "Denies chest pain. Takes aspirin daily. Cough today."
    for n in ("a", "b"):
        write_document(Document(name=n, text=text, spans=[GoldSpan(id="T1", label="problem", start=7, end=17)]), gold)
    empty = NoteResult(note_id="x", route=Route(tier="llm", escalated=True, reason=""), models={"llm": "tiny-llm"})
    pred = tmp_path / "llm.jsonl"
    pred.write_text("".join(json.dumps({**empty.model_dump(mode="json"), "note_id": n}) + "\n" for n in ("a", "b")))
    monkeypatch.setattr("deployments.fast_tier.default.resolve_model_dir", lambda *_a: tmp_path)
    monkeypatch.setattr("deployments.fast_tier.engine.FastTierEngine", _fake_engine_cls(low_prob_sentence=0))
    out = tmp_path / "p.yaml"
    code = main(["calibrate", "--gold", str(gold), "--llm-pred", str(pred), "--target-rate", "0.5", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "llm_not_better" in json.loads(captured.out)["gain_verdict"]
    cfg = load_router_config(out)
    assert cfg.policies["calibrated"]["kind"] == "threshold"  # --target-rate recalibrated it too
    assert all(b["gain"] <= 0 for b in cfg.policies["gain"]["buckets"])
    import numpy as np

    from router import NoteSignals

    r = Router(cfg)
    r.set_running_models(fast="clinie-fast@fake0123", llm="tiny-llm")
    sig = NoteSignals(sentences=[(0, 18)], sentence_chars=[18], per_sentence={"min_token_prob": np.array([0.01])})
    assert r.decide(sig).reason == "llm_not_better"
    assert r.decide(sig, "calibrated").escalates


def test_gold_notes_the_fast_tier_trained_on_are_refused(tmp_path: Path, capsys, monkeypatch):
    """Calibrating on notes the model trained on would set thresholds and gains for a fast tier
    better than the one callers get (the embedded default trained on every shared note)."""
    import json

    model = tmp_path / "model"
    model.mkdir()
    (model / "model_card.json").write_text(json.dumps({"data": {"train_notes": ["n1", "other"]}}))
    monkeypatch.setattr("deployments.fast_tier.default.resolve_model_dir", lambda *_a: model)

    def no_engine(*_a, **_k):
        raise AssertionError("refused before the fast pass")

    monkeypatch.setattr("deployments.fast_tier.engine.FastTierEngine", no_engine)
    gold = _gold(tmp_path)
    write_document(Document(name="n2", text="Takes aspirin.", spans=[]), gold)
    code, err = _run(capsys, "--gold", str(gold), "--target-rate", "0.2", "-o", str(tmp_path / "p.yaml"))
    assert code == 2 and "trained on 1 of the 2 gold notes (e.g. n1)" in err and "--held-out" in err
    assert not (tmp_path / "p.yaml").exists()
    # notes it never saw pass the check (and reach the fast pass)
    (model / "model_card.json").write_text(json.dumps({"data": {"train_notes": ["other"]}}))
    with pytest.raises(AssertionError, match="refused before the fast pass"):
        main(["calibrate", "--gold", str(gold), "--target-rate", "0.2", "-o", str(tmp_path / "p.yaml")])
