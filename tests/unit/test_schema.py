import pytest
from pydantic import ValidationError

from clinie.schema import ALLOWED_PAIRS, ENTITY_TYPES, MODIFIER_TYPES, NoteResult, is_allowed_pair


def test_schema_sizes():
    assert len(ENTITY_TYPES) == 4 and len(MODIFIER_TYPES) == 16 and len(ALLOWED_PAIRS) == 22
    per_entity = {e: sum(1 for p in ALLOWED_PAIRS if p[0] == e) for e in ENTITY_TYPES}
    assert per_entity == {"problem": 8, "treatment": 2, "drug": 8, "test": 4}
    assert is_allowed_pair("drug", "route") and not is_allowed_pair("test", "route")


def _result(**kw):
    base = {
        "note_id": "n",
        "entities": [{"id": "T1", "type": "problem", "start": 7, "end": 11, "text": "pain", "confidence": 0.9}],
        "modifiers": [{"id": "T2", "type": "negation", "start": 0, "end": 6, "text": "Denies", "confidence": 0.9}],
        "relations": [{"type": "hasAttr", "entity": "T1", "modifier": "T2", "confidence": 0.8}],
        "route": {"tier": "bert", "escalated": False, "reason": "confident"},
    }
    base.update(kw)
    return base


def test_valid_result_and_offsets():
    r = NoteResult.model_validate(_result())
    r.check_offsets("Denies pain")
    with pytest.raises(ValueError):
        r.check_offsets("Denied pain")


def test_relation_must_be_an_allowed_pair_between_present_spans():
    with pytest.raises(ValidationError, match="missing span"):
        NoteResult.model_validate(_result(relations=[{"entity": "T1", "modifier": "T9", "confidence": 1}]))
    bad = _result(modifiers=[{"id": "T2", "type": "route", "start": 0, "end": 6, "text": "Denies", "confidence": 0.9}])
    with pytest.raises(ValidationError, match="not an allowed pair"):
        NoteResult.model_validate(bad)


def test_span_extent_is_checked():
    bad = _result(entities=[{"id": "T1", "type": "problem", "start": 7, "end": 7, "text": "", "confidence": 0.9}])
    with pytest.raises(ValidationError):
        NoteResult.model_validate(bad)
