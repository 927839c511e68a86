"""`clinie calibrate`: argument errors exit 2 before any model is loaded; the written policies validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clinie.brat import Document, write_document
from router import Router, load_router_config, parse_router_config
from serve_app import cli
from serve_app.cli import calibrated_policies, main


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
        (["--target-rate", "0.2", "--llm-pred", "x.jsonl"], "--llm-pred goes with --target-f1"),
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
    with pytest.raises(SystemExit) as exc:  # argparse: one of the targets is required
        main(["calibrate", "--gold", str(_gold(tmp_path)), "-o", str(tmp_path / "p.yaml")])
    assert exc.value.code == 2


def test_calibrated_policies_validate_and_keep_the_base_budget(tmp_path: Path):
    base = yaml.safe_load(cli.DEFAULT_POLICY_FILE.read_text())
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
