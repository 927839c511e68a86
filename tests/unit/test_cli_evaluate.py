"""`clinie evaluate` and argument errors, through the real console entry point."""

import json
import subprocess
import sys
from pathlib import Path

from clinie.brat import Document, GoldRelation, GoldSpan, write_document
from serve_app.cli import main

TEXT = "Denies chest pain. Aspirin 81 mg daily."


def _gold(tmp_path: Path) -> Path:
    d = tmp_path / "gold"
    write_document(
        Document(
            name="n1",
            text=TEXT,
            spans=[
                GoldSpan(id="T1", label="problem", start=7, end=17),
                GoldSpan(id="T2", label="negation", start=0, end=6),
                GoldSpan(id="T3", label="drug", start=19, end=26),
            ],
            relations=[GoldRelation(entity="T1", modifier="T2")],
        ),
        d,
    )
    write_document(Document(name="n2", text="Nothing here.", spans=[]), d)
    return d


def test_evaluate_json_and_table(tmp_path: Path, capsys):
    gold = _gold(tmp_path)
    pred = tmp_path / "pred.jsonl"
    line = {
        "note_id": "n1",
        "entities": [
            {"id": "T1", "type": "problem", "start": 13, "end": 17, "text": "pain", "confidence": 0.9},
            {"id": "T3", "type": "drug", "start": 19, "end": 26, "text": "Aspirin", "confidence": 0.9},
        ],
        "modifiers": [{"id": "T2", "type": "negation", "start": 0, "end": 6, "text": "Denies", "confidence": 0.9}],
        "relations": [{"type": "hasAttr", "entity": "T1", "modifier": "T2", "confidence": 0.9}],
    }
    pred.write_text(
        json.dumps(line) + "\n" + json.dumps({"note_id": "zz", "error": {"code": "x", "message": "y"}}) + "\n"
    )
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["strict"]["entities"]["overall"]["tp"] == 1  # drug exact, problem partial
    assert report["relaxed"]["entities"]["overall"]["f1"] == 1.0
    assert report["strict"]["relations"]["overall"]["tp"] == 0
    assert report["relaxed"]["relations"]["overall"]["f1"] == 1.0
    assert report["missing_predictions"] == ["n2"] and report["skipped_prediction_lines"] == 1
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "relaxed  entities   ALL" in table


def test_usage_errors_exit_2(tmp_path: Path):
    gold = _gold(tmp_path)
    assert main(["evaluate", "--gold", str(tmp_path / "nope"), "--pred", str(tmp_path / "p")]) == 2
    assert main(["evaluate", "--gold", str(gold), "--pred", str(tmp_path / "nope.jsonl")]) == 2
    (tmp_path / "a.txt").write_text("Denies pain.")
    proc = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "extract", str(tmp_path / "a.txt"), "--policy", "nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown policy 'nope'" in proc.stderr and "fast-only" in proc.stderr
    assert "Traceback" not in proc.stderr
