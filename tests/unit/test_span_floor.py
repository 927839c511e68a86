"""SpanFloor: the confidence floor under which the fast tier does not report a span, as config,
CLI and application option (its effect on a trained model: tests/integration/test_fast_tier_e2e.py)."""

import pytest
from pydantic import ValidationError

from deployments.fast_tier.config import EngineConfig, SpanFloor
from serve_app.cli import EXIT_USAGE, main
from serve_app.config import AppConfig


def test_the_default_floors_entities_at_half_the_recipes_strict_f1_and_keeps_every_modifier():
    assert SpanFloor() == SpanFloor(entity=0.40, modifier=0.0)
    assert EngineConfig(model_dir=".").span_floor == SpanFloor()
    assert AppConfig().fast_tier_span_floor == SpanFloor()


@pytest.mark.parametrize(
    ("text", "floor"),
    [
        ("0", SpanFloor(entity=0, modifier=0)),
        ("0.5", SpanFloor(entity=0.5, modifier=0.5)),
        (" 0.4 , 0.35 ", SpanFloor(entity=0.4, modifier=0.35)),
    ],
)
def test_the_cli_form_parses(text, floor):
    assert SpanFloor.parse(text) == floor


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "ENTITY,MODIFIER"),
        ("0.1,0.2,0.3", "ENTITY,MODIFIER"),
        ("0.4,", "ENTITY,MODIFIER"),
        ("high", "not a number"),
    ],
)
def test_a_malformed_floor_says_what_is_expected(text, message):
    with pytest.raises(ValueError, match=message):
        SpanFloor.parse(text)


@pytest.mark.parametrize("value", [-0.1, 1.0, 2])
def test_a_floor_outside_0_to_1_is_refused(value):
    with pytest.raises(ValidationError):
        SpanFloor(entity=value)
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"fast_tier_span_floor": {"modifier": value}})


def test_the_application_config_refuses_an_unknown_floor_field():
    with pytest.raises(ValidationError, match="Extra inputs"):
        AppConfig.model_validate({"fast_tier_span_floor": {"entities": 0.3}})


def test_clinie_extract_refuses_a_bad_floor_before_loading_anything(tmp_path, capsys):
    note = tmp_path / "n.txt"
    note.write_text("Denies chest pain.")
    assert main(["extract", "--span-floor", "1.5", str(note)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--span-floor" in err and "less than 1" in err
