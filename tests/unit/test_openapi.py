"""The OpenAPI document tells the truth: committed copy current, every reference resolvable, every
error the ingress can answer documented, and its request schema accepting exactly the bodies the
service accepts (hypothesis, against the service's own validation code). The served document is
compared with the committed one in tests/integration/test_serve_e2e.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clinie.errors import InputError
from clinie.paths import DEFAULT_POLICIES
from clinie.validation import validate_text
from router import Router, UnknownPolicy, load_router_config
from serve_app import openapi
from serve_app.wire import ExtractRequest

DOC = json.loads(openapi.COMMITTED.read_text())
# where the application raises request-level errors: the transport, the note service, the wire
RAISERS = "".join(Path(openapi.__file__).with_name(f).read_text() for f in ("ingress.py", "service.py", "wire.py"))


def test_committed_document_is_current():
    assert openapi.main(["--check"]) == 0, "run `python -m serve_app.openapi` and commit serve_app/openapi.json"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves():
    refs = _refs(DOC)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in DOC["components"]["schemas"], ref


def test_every_error_the_ingress_raises_is_documented():
    raised = set(re.findall(r'ApiError\(\s*(\d{3}),\s*"([a-z_]+)"', RAISERS))
    assert len(raised) >= 8  # the pattern still finds them
    # the fast tier's input errors travel with their own codes (`NoteService._validate`)
    raised |= {(400, "empty_text"), (400, "invalid_text"), (413, "note_too_long")}
    for status, code in raised:
        assert code in openapi.ERROR_CODES[int(status)], (status, code)
    for path in ("/v1/extract", "/v1/extract/batch"):
        documented = DOC["paths"][path]["post"]["responses"]
        assert {str(s) for s in openapi.ERROR_CODES} | {"200"} == set(documented)
        for status in ("429", "503"):
            assert "Retry-After" in documented[status]["headers"]
    assert "text/plain" in DOC["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert {"200", "422", "503"} == set(DOC["paths"]["/readyz"]["get"]["responses"])


def _resolver_schema(name: str) -> dict[str, Any]:
    return {**DOC["components"]["schemas"][name], "components": DOC["components"]}


REQUEST = _resolver_schema("ExtractRequest")
POLICIES = DOC["components"]["schemas"]["ExtractRequest"]["properties"]["policy"]["anyOf"][0]["enum"]
MAX_CHARS = DOC["components"]["schemas"]["ExtractRequest"]["properties"]["text"]["maxLength"]


ROUTER = Router(load_router_config(DEFAULT_POLICIES))


def _service_accepts(body: dict[str, Any]) -> bool:
    """What the ingress does with a body before admission: pydantic, the text check, the router's
    policy check (the shipped policies, which the committed document names)."""
    try:
        req = ExtractRequest.model_validate(body)
        validate_text(req.text, MAX_CHARS)
        ROUTER.check(req.policy)
    except (ValidationError, InputError, UnknownPolicy):
        return False
    return True


def _document_accepts(body: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(REQUEST).is_valid(body)


odd_text = st.text(
    alphabet=st.sampled_from(
        [" ", "\t", "\n", "\r", "\x0b", "\x1c", "\x85", "\xa0", "\u2003", "\u3000", "a", "é", "🩺", "\x00"]
    ),
    max_size=6,
)
bodies = st.fixed_dictionaries(
    {"text": st.one_of(odd_text, st.text(max_size=20), st.integers(), st.none())},
    optional={
        "note_id": st.one_of(st.text(max_size=300), st.none(), st.integers()),
        "policy": st.one_of(st.sampled_from([*POLICIES, "", "nope", "DEFAULT"]), st.none()),
        "deadline_ms": st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=400_000),
            st.integers(min_value=-5, max_value=400_000),
            st.booleans(),
            st.sampled_from(["5000", "soon"]),
            st.none(),
        ),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_request_schema_accepts_exactly_what_the_service_accepts(body: dict[str, Any]):
    # explicit nulls included: the service reads them as absent, the document allows them
    assert _document_accepts(body) == _service_accepts(body), body


@pytest.mark.parametrize("text", ["x", "🩺", "a" * MAX_CHARS, "\x1c a", "\u3000b"])
def test_edge_texts_agree(text: str):
    body = {"text": text}
    assert _document_accepts(body) == _service_accepts(body) is True


@pytest.mark.parametrize("text", ["", " ", "\x1c\x1d", "\u3000\n", "a" * (MAX_CHARS + 1)])
def test_refused_texts_agree(text: str):
    body = {"text": text}
    assert _document_accepts(body) == _service_accepts(body) is False
