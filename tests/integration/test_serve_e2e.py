"""The whole application on a real local Ray Serve: real HTTP and gRPC clients, the tiny fast tier,
the real vLLM CPU engine with the embedded SmolLM2, the router with a test policy file.

One Ray instance for the module (start ~15 s; the LLM engine comes up in the background). API-key
auth is on for the whole module, so every call also exercises it. The LLM-removal test runs last.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from clinie.schema import NoteResult
from tests.conftest import UNLABELED

pytestmark = pytest.mark.slow

HTTP_PORT, GRPC_PORT = 18123, 19123
URL = f"http://127.0.0.1:{HTTP_PORT}"
KEY = "test-key-1"
CANARY = "Zebulon Quixotic-Canary 4471"
NOTE = "Patient denies chest pain. Takes aspirin 81 mg daily. Severe headache since Monday."
POLICIES = {
    "default_policy": "default",
    "policies": {
        "default": {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5},
        # flags every sentence (no token is that certain) -> the whole note goes to the LLM tier
        "escalate-all": {"kind": "threshold", "signal": "max_entropy", "threshold": 0.0},
    },
}


def call(path: str, body: Any = None, raw: bytes | None = None, key: str | None = KEY) -> tuple[int, dict, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(URL + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=180) as r:
            return r.status, json.loads(r.read() or b"{}"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), {k.lower(): v for k, v in e.headers.items()}


@pytest.fixture(scope="module")
def policies_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "policies.yaml"
    path.write_text(yaml.safe_dump(POLICIES))
    return path


TINY_KEY = "tiny-tenant-key-000001"  # a tenant with a tight rate limit (tenants file below)
LATE_KEY = "late-tenant-key-000002"  # added to the file while the service runs


def tenants_doc(*extra: dict[str, Any]) -> dict[str, Any]:
    # The environment's keys (KEY, other-key) get `default_limit`: high, so the load tests meet
    # admission, not a rate limit.
    tiny = {"name": "tiny", "key": TINY_KEY, "limit": {"notes_per_s": 0.01, "burst": 2}}
    return {"default_limit": {"notes_per_s": 10_000, "burst": 10_000}, "tenants": [tiny, *extra]}


@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "tenants.yaml"
    path.write_text(yaml.safe_dump(tenants_doc()))
    return path


@pytest.fixture(scope="module")
def service(tiny_model: Path, clinie_home: Path, policies_file: Path, tenants_file: Path) -> Iterator[dict[str, Any]]:
    from serve_app import local

    os.environ["CLINIE_HOME"] = str(clinie_home)  # the Ray workers inherit this process's environment
    os.environ["CLINIE_TEST_KEYS"] = f"{KEY},other-key"
    from deployments.llm_tier.default_model import ensure_default_llm

    ensure_default_llm()
    cfg, raw = local.local_app_config(
        fast_tier_model=str(tiny_model),
        policies_file=str(policies_file),
        api_keys_env="CLINIE_TEST_KEYS",
        tenants_file=str(tenants_file),
    )
    # cap = 4 x max_replicas (2) = 8 notes in flight: small, so the overload test (24 clients)
    # reaches it, and just enough for the 8 clients of the scaling test
    cfg = cfg.model_copy(update={"admission": cfg.admission.model_copy(update={"max_in_flight_per_replica": 4})})
    t0 = time.perf_counter()
    svc = local.start(cfg, raw, port=HTTP_PORT, grpc_port=GRPC_PORT)
    ready_s = local.wait_ready(URL, timeout_s=120)
    try:
        yield {"cfg": cfg, "raw": raw, "start_to_ready_s": time.perf_counter() - t0, "svc": svc, "ready_s": ready_s}
    finally:
        local.stop()


def wait_llm_ready(timeout_s: float = 180) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        status, body, _ = call("/readyz?strict=true")
        if status == 200:
            return
        assert body["components"]["llm_tier"]["state"] in ("starting", "ready"), body
        time.sleep(1)
    raise AssertionError("LLM tier did not become ready")


def test_ready_health_docs_and_start_time(service: dict[str, Any]):
    assert service["start_to_ready_s"] < 60
    status, body, _ = call("/readyz")
    assert status == 200 and body["ready"] is True and body["missing"] == []
    assert body["components"]["fast_tier"]["state"] == "ready"
    assert set(body["components"]["router"]["policies"]) == {"default", "escalate-all", "fast-only", "llm-only"}
    assert call("/healthz")[:2] == (200, {"status": "ok"})
    with urllib.request.urlopen(URL + "/openapi.json", timeout=10) as r:
        spec = json.loads(r.read())
    # the served document is the committed one (serve_app/openapi.json) but for this service's policies
    from serve_app import openapi

    committed = json.loads(openapi.COMMITTED.read_text())
    enums = []
    for doc in (spec, committed):
        for name in ("ExtractRequest", "ExtractBatchRequest"):
            enums.append(doc["components"]["schemas"][name]["properties"]["policy"]["anyOf"][0].pop("enum"))
    assert spec == committed
    assert enums[0] == enums[1] == sorted(body["components"]["router"]["policies"])
    with urllib.request.urlopen(URL + "/docs", timeout=10) as r:
        assert r.status == 200


def test_extract_over_http_follows_the_contract(service: dict[str, Any]):
    status, body, _ = call("/v1/extract", {"text": NOTE, "note_id": "n1", "policy": "fast-only"})
    assert status == 200, body
    result = NoteResult.model_validate(body)
    result.check_offsets(NOTE)
    assert result.note_id == "n1" and result.route.tier == "bert" and result.route.reason == "policy:fast-only"
    assert {"min_token_prob", "ood_mahalanobis", "sentences"} <= set(result.route.signals)
    assert result.models["bert"].startswith("clinie-fast@") and result.timings_ms["total"] > 0


def test_batch_keeps_order_and_isolates_bad_notes(service: dict[str, Any]):
    notes = [{"text": NOTE, "note_id": "a"}, {"text": "", "note_id": "b"}, {"text": 5, "note_id": "c"}]
    status, body, _ = call("/v1/extract/batch", {"notes": notes, "policy": "fast-only"})
    assert status == 200, body
    a, b, c = body["results"]
    NoteResult.model_validate(a).check_offsets(NOTE)
    assert (b["note_id"], b["error"]["code"]) == ("b", "empty_text")
    assert (c["note_id"], c["error"]["code"]) == ("c", "invalid_text")


@pytest.mark.parametrize(
    ("body", "raw", "status", "code"),
    [
        (None, b"{not json", 400, "malformed_json"),
        (None, b"\xff\xfe", 400, "malformed_json"),
        (None, b"[1, 2]", 400, "invalid_request"),
        ({"note_id": "x"}, None, 400, "invalid_request"),
        ({"text": 42}, None, 400, "invalid_request"),
        ({"text": ""}, None, 400, "empty_text"),
        ({"text": "   \n"}, None, 400, "empty_text"),
        ({"text": "x" * 200_001}, None, 413, "note_too_long"),
        ({"notes": [{"text": "a"}] * 65}, None, 413, "batch_too_large"),
        ({"text": "fine", "policy": "no-such-policy"}, None, 400, "unknown_policy"),
        ({"text": "fine", "policy": ""}, None, 400, "unknown_policy"),  # a name, not "absent"
        ({"text": "fine", "deadline_ms": 0}, None, 400, "invalid_request"),
        ({"text": "fine", "deadline_ms": 300_001}, None, 400, "invalid_request"),
        ({"text": "fine", "deadline_ms": "soon"}, None, 400, "invalid_request"),
        ({"text": "fine", "deadline_ms": "5000"}, None, 400, "invalid_request"),  # a number, not a string
        ({"text": "fine", "deadline_ms": True}, None, 400, "invalid_request"),
        (None, b'{"text": "fine", "deadline_ms": NaN}', 400, "invalid_request"),
        (None, b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "malformed_json"),
        (None, b'{"text": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", 400, "malformed_json"),
    ],
)
def test_bad_input_is_a_clear_4xx(service: dict[str, Any], body: Any, raw: bytes | None, status: int, code: str):
    path = "/v1/extract/batch" if body and "notes" in body else "/v1/extract"
    got, answer, _ = call(path, body, raw)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"]["message"]
    if code == "unknown_policy":
        assert "fast-only" in answer["error"]["message"]  # lists the known names
    if body and "deadline_ms" in body:
        assert answer["error"]["message"].startswith("deadline_ms")  # names the field
    assert call("/healthz")[0] == 200  # and nothing died


def test_the_openapi_document_holds_under_schemathesis(service: dict[str, Any]):
    """schemathesis (v4) run as a caller would (`st run URL/openapi.json --checks all`, the repo's
    schemathesis.toml): a few hundred generated requests, good and bad, over real HTTP; zero
    failures, and the service is ready afterwards."""
    st = Path(sys.executable).with_name("st")
    repo = Path(__file__).resolve().parents[2]
    cmd = [str(st), "--config-file", str(repo / "schemathesis.toml"), "run", URL + "/openapi.json"]
    cmd += ["--checks", "all", "--phases", "examples,coverage,fuzzing", "-n", "10", "--max-time", "90"]
    cmd += ["--request-timeout", "60", "--seed", "7", "-w", "1", "--no-shrink", "-H", f"Authorization: Bearer {KEY}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts and int(counts[1]) == int(counts[2]) >= 200, run.stdout[-2000:]
    print(f"schemathesis: {counts[0]}")
    assert call("/readyz")[0] == 200


def test_generated_bad_input_over_http_and_grpc(service: dict[str, Any]):
    """A few hundred of benchmarks/fuzz.py's seeded cases (random bytes, JSON shapes, deep nesting,
    wrong types, odd Unicode, oversized fields, random policies and deadlines) over real HTTP and
    gRPC: never a 5xx but 503 (or 504 `deadline_exceeded`), every 4xx with the contract's body,
    every 200 with exact offsets, nothing unanswered, and the service answers afterwards."""
    from benchmarks.fuzz import run

    report = run(URL, f"127.0.0.1:{GRPC_PORT}", n=240, seed=11, key=KEY, workers=4)
    assert report["violation_count"] == 0, report["violations"][:20]
    assert report["answers_afterwards"] == 200
    http = {k: v for k, v in report["statuses"].items() if k.startswith("http ")}
    assert sum(http.values()) == 240 and http.get("http 200", 0) >= 10 and http.get("http 400", 0) >= 50, http
    print(f"fuzz: {report['statuses']}")


def test_api_key_is_required_when_configured(service: dict[str, Any]):
    status, body, _ = call("/v1/extract", {"text": NOTE}, key=None)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert call("/v1/extract", {"text": NOTE}, key="wrong")[0] == 401
    assert call("/v1/extract", {"text": NOTE, "policy": "fast-only"}, key="other-key")[0] == 200


def test_a_tenant_over_its_rate_limit_gets_429_and_others_do_not(service: dict[str, Any]):
    body = {"text": NOTE, "policy": "fast-only"}
    statuses = [call("/v1/extract", body, key=TINY_KEY) for _ in range(4)]
    assert [s for s, _, _ in statuses[:2]] == [200, 200]  # the burst
    status, err, headers = statuses[2]
    assert (status, err["error"]["code"]) == (429, "rate_limited"), err
    assert "'tiny'" in err["error"]["message"] and "0.01 notes/s, burst 2" in err["error"]["message"]
    assert int(headers["retry-after"]) >= 1
    assert call("/v1/extract", body)[0] == 200  # one tenant's limit is not another's
    with pytest.raises(grpc.RpcError) as rpc:
        _grpc_stub().Extract(pb_request(), metadata=(("authorization", f"Bearer {TINY_KEY}"),), timeout=60)
    assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate_limited" in rpc.value.details()


def test_tenants_file_reloads_without_a_restart(service: dict[str, Any], tenants_file: Path):
    body = {"text": NOTE, "policy": "fast-only"}
    assert call("/v1/extract", body, key=LATE_KEY)[0] == 401
    tenants_file.write_text(yaml.safe_dump(tenants_doc({"name": "late", "key": LATE_KEY})))
    t0 = time.perf_counter()
    while call("/v1/extract", body, key=LATE_KEY)[0] != 200:
        assert time.perf_counter() - t0 < 15, "the new key was not picked up"
        time.sleep(0.5)
    tenants_file.write_text(yaml.safe_dump(tenants_doc()))
    t0 = time.perf_counter()
    while call("/v1/extract", body, key=LATE_KEY)[0] != 401:
        assert time.perf_counter() - t0 < 15, "the removed key still works"
        time.sleep(0.5)


def test_readiness_shows_details_only_to_callers_with_a_key(service: dict[str, Any]):
    status, body, _ = call("/readyz", key=None)
    assert status == 200 and body == {"ready": True, "components": {}, "missing": []}
    status, body, _ = call("/readyz")
    assert status == 200 and body["components"]["fast_tier"]["model"].startswith("clinie-fast@")
    assert "/" not in body["components"]["router"]["source"]  # a file name, never a path


def pb_request() -> Any:
    from clinie.proto import clinie_pb2 as pb

    return pb.ExtractRequest(text=NOTE, policy="fast-only")


def _grpc_stub() -> Any:
    from clinie.proto import clinie_pb2_grpc as pbg

    return pbg.ClinieStub(grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}"))


META = (("authorization", f"Bearer {KEY}"),)


def test_extract_over_grpc(service: dict[str, Any]):
    from clinie import grpc_convert as G
    from clinie.proto import clinie_pb2 as pb

    stub = _grpc_stub()
    reply = stub.Extract(pb.ExtractRequest(text=NOTE, note_id="g1", policy="fast-only"), metadata=META, timeout=60)
    result = G.proto_to_result(reply)
    assert isinstance(result, NoteResult) and result.note_id == "g1"
    result.check_offsets(NOTE)
    batch = stub.ExtractBatch(
        pb.ExtractBatchRequest(notes=[pb.NoteInput(text=NOTE, note_id="x"), pb.NoteInput(text="", note_id="y")]),
        metadata=META,
        timeout=60,
    )
    slots = [G.proto_to_dict(r) for r in batch.results]
    assert slots[0]["note_id"] == "x" and "entities" in slots[0]
    assert slots[1] == {"note_id": "y", "error": {"code": "empty_text", "message": "note text is empty"}}


@pytest.mark.parametrize("case", ["empty", "unknown_policy", "bad_utf8", "no_key"])
def test_bad_grpc_input_is_invalid_argument(service: dict[str, Any], case: str):
    from clinie.proto import clinie_pb2 as pb

    stub = _grpc_stub()
    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
    with pytest.raises(grpc.RpcError) as err:
        if case == "empty":
            stub.Extract(pb.ExtractRequest(text=""), metadata=META, timeout=30)
        elif case == "unknown_policy":
            stub.Extract(pb.ExtractRequest(text="x", policy="nope"), metadata=META, timeout=30)
        elif case == "no_key":
            stub.Extract(pb.ExtractRequest(text="x"), timeout=30)
        else:  # a string field with invalid UTF-8, as raw bytes on the wire
            raw = pb.ExtractRequest(text="abc").SerializeToString().replace(b"abc", b"a\xff\xfe")
            method = channel.unary_unary(
                "/clinie.v1.Clinie/Extract",
                request_serializer=lambda b: b,
                response_deserializer=pb.NoteReply.FromString,
            )
            method(raw, metadata=META, timeout=30)
    expected = grpc.StatusCode.UNAUTHENTICATED if case == "no_key" else grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.code() == expected
    assert "error" in json.loads(err.value.details())


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its timings, confidences to 4 places (what may differ between two calls)."""
    out = {k: v for k, v in result.items() if k != "timings_ms"}
    for kind in ("entities", "modifiers", "relations"):
        out[kind] = [{**x, "confidence": round(x["confidence"], 4)} for x in result.get(kind, [])]
    return out


def test_python_client_answers_alike_over_http_and_grpc(service: dict[str, Any]):
    from clinie.client import AsyncClient, Client, ClinieError

    notes = [NOTE, {"note_id": "b2", "text": NOTE.upper()}, ""]
    grpc_url = f"grpc://127.0.0.1:{GRPC_PORT}"
    with Client(URL, api_key=KEY) as h, Client(grpc_url, api_key=KEY) as g:
        one = [c.extract(NOTE, note_id="c1", policy="fast-only") for c in (h, g)]
        NoteResult.model_validate(one[0]).check_offsets(NOTE)
        assert one[0]["note_id"] == "c1" and _comparable(one[0]) == _comparable(one[1])
        batches = [c.extract_batch(notes, policy="fast-only") for c in (h, g)]
        assert [r.get("note_id") for r in batches[0]] == [None, "b2", None]
        assert [_comparable(r) for r in batches[0][:2]] == [_comparable(r) for r in batches[1][:2]]
        assert batches[0][2]["error"]["code"] == batches[1][2]["error"]["code"] == "empty_text"
        for c in (h, g):  # a 4xx raises at once, named as the contract names it
            with pytest.raises(ClinieError) as err:
                c.extract(NOTE, policy="no-such-policy")
            assert (err.value.status, err.value.code, err.value.attempts) == (400, "unknown_policy", 1)
    for url in (URL, grpc_url):
        with Client(url) as anonymous, pytest.raises(ClinieError) as err:
            anonymous.extract(NOTE)
        assert (err.value.status, err.value.code) == (401, "unauthorized")

    async def both() -> list[dict[str, Any]]:
        async with AsyncClient(URL, api_key=KEY) as ah, AsyncClient(grpc_url, api_key=KEY) as ag:
            return list(await asyncio.gather(*(c.extract(NOTE, note_id="c1", policy="fast-only") for c in (ah, ag))))

    assert [_comparable(r) for r in asyncio.run(both())] == [_comparable(one[0])] * 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _real_note() -> str:
    if not UNLABELED.exists():
        pytest.skip(f"unlabelled notes not found at {UNLABELED}")
    with UNLABELED.open() as f:
        return json.loads(f.readline())["text"][:2500]


def test_web_viewer_in_a_real_browser(service: dict[str, Any], tmp_path: Path):
    """Real Chromium (Debian's package, driven by Playwright): paste a real note, submit, and hold
    the page's DOM to the contract against /v1/extract's answer for the same note; then a short note
    with an emoji (offsets count code points, JS strings do not) sent whole to the LLM tier, whose
    part of the note must be marked."""
    exe = _chromium()
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; `make test` installs it)")
    from playwright.sync_api import sync_playwright

    note = _real_note()
    status, expected, _ = call("/v1/extract", {"text": note, "policy": "fast-only"})
    assert status == 200 and expected["entities"], expected

    def spans_on(page: Any) -> list[dict[str, Any]]:
        return page.eval_on_selector_all(
            "[data-span-id]",
            "els => els.map(e => ({id: e.dataset.spanId, type: e.dataset.type,"
            " start: +e.dataset.start, end: +e.dataset.end, text: e.textContent}))",
        )

    def submit(page: Any, text: str, policy: str) -> None:
        page.evaluate("document.body.removeAttribute('data-state')")
        page.select_option("#policy", policy)
        page.fill("#note", text)
        page.click("#submit")
        page.wait_for_selector("body[data-state]", timeout=240_000)
        assert page.get_attribute("body", "data-state") == "done", page.text_content("#status")

    shots = Path(os.environ.get("CLINIE_SCREENSHOT_DIR") or tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            problems: list[str] = []  # console errors include CSP violations
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            page.goto(URL + "/")
            assert page.is_visible("#api-key")  # keys are on in this module
            page.fill("#api-key", KEY)
            submit(page, note, "fast-only")

            spans = spans_on(page)
            want = expected["entities"] + expected["modifiers"]
            assert sorted(s["id"] for s in spans) == sorted(s["id"] for s in want)  # each span exactly once
            by_id = {s["id"]: s for s in want}
            for s in spans:
                assert s["text"] == note[s["start"] : s["end"]], s
                assert (s["type"], s["start"], s["end"]) == tuple(by_id[s["id"]][k] for k in ("type", "start", "end"))
            rels = page.eval_on_selector_all(
                "[data-entity]", "els => els.map(e => [e.dataset.entity, e.dataset.modifier])"
            )
            assert rels == [[r["entity"], r["modifier"]] for r in expected["relations"]]
            assert page.text_content('[data-route="tier"]') == "bert"
            assert page.eval_on_selector_all("#rendered .llm", "els => els.length") == 0  # nothing went to the LLM
            page.screenshot(path=str(shots / "viewer.png"), full_page=True)

            wait_llm_ready()
            short = "\U0001fa7a " + NOTE  # a stethoscope: one code point, two UTF-16 units
            submit(page, short, "escalate-all")
            assert page.text_content('[data-route="tier"]') == "llm"
            for s in spans_on(page):
                assert s["text"] == short[s["start"] : s["end"]], s
            banded = page.eval_on_selector_all("#rendered .llm", "els => els.map(e => e.textContent).join('')")
            assert banded.strip() and set(banded) <= set(short)
            page.screenshot(path=str(shots / "viewer-llm.png"), full_page=True)
            assert not problems, problems
            assert all(u.startswith(URL + "/") for u in urls), urls  # nothing fetched from elsewhere
        finally:
            browser.close()


def test_llm_only_and_escalation_through_the_llm_tier(service: dict[str, Any]):
    wait_llm_ready()
    for policy in ("llm-only", "escalate-all"):
        status, body, _ = call("/v1/extract", {"text": NOTE, "note_id": "e", "policy": policy})
        assert status == 200, body
        result = NoteResult.model_validate(body)
        result.check_offsets(NOTE)
        assert result.route.escalated and result.route.tier == "llm", result.route
        assert result.route.reason == ("policy:llm-only" if policy == "llm-only" else "low_confidence")
        assert result.models["llm"].startswith("smollm2") and result.timings_ms["llm"] > 0


def test_deadline_answers_from_the_fast_tier(service: dict[str, Any]):
    wait_llm_ready()
    t0 = time.perf_counter()
    status, body, _ = call("/v1/extract", {"text": NOTE * 6, "policy": "llm-only", "deadline_ms": 400})
    assert status == 200, body
    assert time.perf_counter() - t0 < 10
    # the router may already know the LLM tier cannot make 400 ms (llm_overloaded), or it times out
    assert body["route"]["tier"] == "bert"
    assert body["route"]["reason"] in ("llm_timeout", "deadline_exceeded", "llm_overloaded")


def test_overload_is_refused_quickly_with_retry_after(service: dict[str, Any]):
    long_note = " ".join([NOTE] * 40)

    def one(_: int) -> tuple[int, float, dict]:
        t0 = time.perf_counter()
        status, _, headers = call("/v1/extract", {"text": long_note, "policy": "fast-only"})
        return status, time.perf_counter() - t0, headers

    with cf.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    codes = [s for s, _, _ in answers]
    assert set(codes) <= {200, 429, 503}, codes
    assert codes.count(200) >= 1 and (codes.count(429) + codes.count(503)) >= 1, codes
    for status, seconds, headers in answers:
        if status != 200:
            assert headers.get("retry-after") and seconds < 1.0
    assert call("/healthz")[0] == 200


def test_python_client_retries_through_overload(service: dict[str, Any]):
    """24 clients at once against a cap of 8 in flight: the service refuses some (429 with
    Retry-After, as the test above shows), and clinie.client waits and sends again until every
    note is answered."""
    from clinie.client import Client

    long_note = " ".join([NOTE] * 40)
    refusals: list[tuple[int, float]] = []

    def one(i: int) -> dict[str, Any]:
        on_retry = lambda e, w: refusals.append((e.status, w))  # noqa: E731
        with Client(URL, api_key=KEY, retries=20, max_retry_wait=3, on_retry=on_retry) as c:
            return c.extract(long_note, note_id=str(i), policy="fast-only")

    with cf.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    assert [r["note_id"] for r in results] == [str(i) for i in range(24)]
    statuses = {s for s, _ in refusals}
    assert 429 in statuses and statuses <= {429, 503}, refusals
    assert all(w >= 1.0 for s, w in refusals if s == 429)  # Retry-After (at least 1 s) was waited out


def test_deadline_admission_refuses_only_what_cannot_make_it(service: dict[str, Any]):
    """Long notes, 12 at once, with a deadline of about four notes' service time: what can be
    answered in time is admitted and answered (or, if a note is overtaken after all, a 504); the
    rest is refused at once."""
    long_note = " ".join([NOTE] * 40)
    single = []
    for _ in range(3):  # the ingress measures the fast tier's speed from answered notes
        t0 = time.perf_counter()
        assert call("/v1/extract", {"text": long_note, "policy": "fast-only"})[0] == 200
        single.append(time.perf_counter() - t0)
    deadline_ms = max(1500.0, 4000 * min(single))

    def one(_: int) -> tuple[int, float, dict, dict]:
        t0 = time.perf_counter()
        body = {"text": long_note, "policy": "fast-only", "deadline_ms": deadline_ms}
        status, answer, headers = call("/v1/extract", body)
        return status, time.perf_counter() - t0, answer, headers

    with cf.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(12)))
    codes = [a[0] for a in answers]
    assert set(codes) <= {200, 429, 504}, codes
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    for status, seconds, body, headers in answers:
        assert seconds < deadline_ms / 1000 + 1.0, (status, seconds)  # every answer near its deadline at worst
        if status == 429:
            assert body["error"]["code"] == "overloaded" and headers.get("retry-after")
            assert "deadline" in body["error"]["message"] and seconds < 1.0
        if status == 504:
            assert body["error"]["code"] == "deadline_exceeded"
    with urllib.request.urlopen(URL + "/metrics", timeout=10) as r:
        assert 'clinie_rejected_total{reason="deadline"}' in r.read().decode()


def _ingress_count(name: str, labels: str) -> float:
    """A counter of the Ingress's own /metrics (0 when it has no such series yet)."""
    with urllib.request.urlopen(URL + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(rf"^{name}{{{re.escape(labels)}}} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_storm_of_refusals_is_answered_at_the_front_door(service: dict[str, Any]):
    """16 clients that ask again as soon as they are refused, with deadlines that fit about three
    notes: the Ingress refuses the first of a kind with a shed hint, and Ray's proxy refuses the
    like of it itself for a moment (serve_app/shedding.py), so more 429s reach the clients than the
    Ingress gave. Every one is the contract's refusal; none shows the internal headers; a bad or
    unauthorized request sent right after a refusal, while the hint is fresh, still gets its own
    4xx; and the notes that fit are still answered."""
    long_note = " ".join([NOTE] * 40)
    single = []
    for _ in range(3):
        t0 = time.perf_counter()
        assert call("/v1/extract", {"text": long_note, "policy": "fast-only"})[0] == 200
        single.append(time.perf_counter() - t0)
    deadline_ms = max(1000.0, 3000 * min(single))
    refused_by_ingress = _ingress_count("clinie_requests_total", 'api="http",endpoint="extract",status="429"')
    answers: list[tuple[int, float, dict, dict]] = []
    after_refusal: list[tuple[str, int, str]] = []
    end = time.perf_counter() + 4.0

    def client(i: int) -> None:
        body = {"text": long_note, "policy": "fast-only", "deadline_ms": deadline_ms}
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            status, answer, headers = call("/v1/extract", body)
            answers.append((status, time.perf_counter() - t0, answer, headers))
            if status == 429 and i < 3:  # at once, while the hint this refusal left is fresh
                bad = [
                    ("empty", {**body, "text": "   "}, KEY),
                    ("unknown policy", {**body, "policy": "no-such-policy"}, KEY),
                    ("no key", body, None),
                ][i]
                status, answer, _ = call("/v1/extract", bad[1], key=bad[2])
                after_refusal.append((bad[0], status, answer["error"]["code"]))

    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    codes = [a[0] for a in answers]
    assert set(codes) <= {200, 429, 504}, codes
    assert codes.count(200) >= 1 and codes.count(429) >= 5, codes
    for status, seconds, body, headers in answers:
        assert not [h for h in headers if h.startswith("x-clinie-")], headers
        if status == 429:
            assert body["error"]["code"] == "overloaded", body
            assert int(headers["retry-after"]) >= 1 and headers.get("x-request-id"), headers
            assert seconds < 1.0, seconds
    by_ingress = _ingress_count("clinie_requests_total", 'api="http",endpoint="extract",status="429"')
    assert by_ingress - refused_by_ingress < codes.count(429), (by_ingress - refused_by_ingress, codes.count(429))
    expected = {
        "empty": (400, "empty_text"),
        "unknown policy": (400, "unknown_policy"),
        "no key": (401, "unauthorized"),
    }
    assert after_refusal, "no refusal reached a client that checks bad input"
    for name, status, code in after_refusal:
        assert (status, code) == expected[name], (name, status, code)


def test_a_request_sent_again_keeps_its_callers_deadline(service: dict[str, Any]):
    """`x-clinie-spent-ms` (set by the proxy when it sends a request again after losing its Ingress
    replica, serve_app/proxy_retry.py) counts against the request's deadline: all of it spent is a
    504 at once, part of it leaves the rest; the header can only shorten a deadline."""

    def post(spent: str, path: str = "/v1/extract", body: dict | None = None) -> tuple[int, dict]:
        body = body or {"text": NOTE, "policy": "fast-only", "deadline_ms": 5000}
        req = urllib.request.Request(
            URL + path,
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {KEY}", "x-clinie-spent-ms": spent},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, body = post("5000")
    assert status == 504 and body["error"]["code"] == "deadline_exceeded", body
    assert post("100")[0] == 200
    assert post("-5")[0] == 200 and post("nonsense")[0] == 200  # ignored, not refused
    # a batch of only bad notes gets its error slots however late: no model work is waiting
    status, body = post("5000", "/v1/extract/batch", {"notes": [{"text": "", "note_id": "e"}], "deadline_ms": 5000})
    assert status == 200 and body["results"][0]["error"]["code"] == "empty_text", body


def _fast_replicas() -> list[dict[str, Any]]:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    return details["applications"]["clinie"]["deployments"]["FastTier"]["replicas"]


def _running(replicas: list[dict[str, Any]]) -> int:
    return sum(r["state"] == "RUNNING" for r in replicas)


def test_fast_tier_scales_out_under_load_and_back(service: dict[str, Any]):
    """8 closed-loop clients: nothing refused (the default 30 s deadline fits the queue), the
    queue reaches FastTier, the autoscaler adds the second replica; idle again, it goes back."""
    stop = time.time() + 90
    seen_two = []
    codes: list[int] = []

    def client() -> None:
        while time.time() < stop and not seen_two:
            codes.append(call("/v1/extract", {"text": " ".join([NOTE] * 20), "policy": "fast-only"})[0])

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client) for _ in range(8)]
        while time.time() < stop and not seen_two:
            if _running(_fast_replicas()) >= 2:
                seen_two.append(time.time())
            time.sleep(1)
        for f in futures:
            f.result()
    assert seen_two, "FastTier never reached 2 running replicas under 8 clients"
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    t0 = time.time()
    while _running(_fast_replicas()) > 1 and time.time() - t0 < 150:
        time.sleep(2)
    assert _running(_fast_replicas()) == 1, "FastTier did not scale back to 1 replica within 150 s"


def test_fast_tier_replica_killed_under_load(service: dict[str, Any]):
    """A FastTier replica dies while clients send notes: every request ends in a result or a
    retryable refusal with `Retry-After` (503 when the ingress's one retry on another replica fails
    too; 429 from admission while no replica runs and the replacement cannot start inside the
    deadline), never a 500; ready again after."""
    import ray

    stop = time.time() + 12
    answers: list[tuple[int, dict]] = []

    def client() -> None:
        while time.time() < stop:
            status, _, headers = call("/v1/extract", {"text": NOTE, "policy": "fast-only"})
            answers.append((status, headers))

    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        time.sleep(3)
        victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if "FastTier" in a["name"]]
        assert victims
        ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]), no_restart=False)
        for f in futures:
            f.result()
    codes = [s for s, _ in answers]
    assert codes.count(200) > 0 and set(codes) <= {200, 429, 503}, {c: codes.count(c) for c in set(codes)}
    assert all(h.get("retry-after") for s, h in answers if s in (429, 503))
    t0 = time.time()
    while call("/readyz")[0] != 200 and time.time() - t0 < 60:
        time.sleep(1)
    assert call("/readyz")[0] == 200
    assert call("/v1/extract", {"text": NOTE, "policy": "fast-only"})[0] == 200
    # and the controller has replaced the lost replica: the application is RUNNING again
    from ray import serve

    while serve.status().applications["clinie"].status != "RUNNING" and time.time() - t0 < 90:
        time.sleep(1)
    assert serve.status().applications["clinie"].status == "RUNNING"


def test_ingress_replica_killed_under_load_answers_every_request(service: dict[str, Any]):
    """The Ingress replica dies while clients send notes: plain HTTP callers (one attempt each) get a
    result or a retryable 503 with `Retry-After`, never Ray's bare 500 — the proxy sends a request
    whose replica was lost once more (serve_app/proxy_retry.py) — gRPC callers (one attempt) get a
    result or UNAVAILABLE, never INTERNAL, and callers through clinie.client get a result for every
    call. The replica is replaced and the app is ready again."""
    import ray
    from ray import serve

    from clinie.client import Client

    def ingress() -> list[dict[str, Any]]:
        return [a for a in ray.util.list_named_actors(all_namespaces=True) if "#Ingress#" in a["name"]]

    before = {a["name"] for a in ingress()}
    assert before
    stop = time.time() + 12
    plain: list[tuple[int, dict, dict]] = []
    results: list[dict[str, Any]] = []

    def plain_client() -> None:
        while time.time() < stop:
            plain.append(call("/v1/extract", {"text": NOTE, "policy": "fast-only"}))

    def retrying_client() -> None:
        with Client(URL, api_key=KEY, timeout=60, retries=6, backoff=0.5, max_retry_wait=5) as c:
            while time.time() < stop:
                results.append(c.extract(NOTE, policy="fast-only"))  # raises (fails the test) if lost

    grpc_codes: list[str] = []

    def grpc_client() -> None:  # one attempt a call, like the plain HTTP callers
        import grpc

        from clinie.proto import clinie_pb2 as pb

        stub = _grpc_stub()
        while time.time() < stop:
            try:
                stub.Extract(pb.ExtractRequest(text=NOTE, policy="fast-only"), metadata=META, timeout=60)
                grpc_codes.append("OK")
            except grpc.RpcError as err:
                grpc_codes.append(err.code().name)
                if err.code() == grpc.StatusCode.UNAVAILABLE and err.details():
                    assert json.loads(err.details())["error"]["code"] in ("unavailable", "overloaded")

    with cf.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(plain_client) for _ in range(2)] + [pool.submit(retrying_client) for _ in range(2)]
        futures.append(pool.submit(grpc_client))
        time.sleep(3)
        victim = ingress()[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=False)
        for f in futures:
            f.result()
    codes = [s for s, _, _ in plain]
    counts = {c: codes.count(c) for c in set(codes)}
    retried = sum(h.get("x-clinie-proxy-retried") == "1" for _, _, h in plain)
    print(f"ingress kill, plain HTTP: {counts}, {retried} sent again by the proxy")
    # 429: the replacement replica's admission, cold, refuses what it cannot promise yet
    assert codes.count(200) > 0 and set(codes) <= {200, 429, 503}, counts
    for status, body, headers in plain:
        if status in (429, 503):
            assert headers.get("retry-after") and body["error"]["code"] in ("unavailable", "overloaded"), body
    # gRPC: Ray's gRPC proxy cannot send again; a call on the lost replica is UNAVAILABLE (the
    # contract's retryable 503), never INTERNAL
    grpc_counts = {c: grpc_codes.count(c) for c in set(grpc_codes)}
    print(f"ingress kill, gRPC: {grpc_counts}")
    assert "OK" in grpc_counts and set(grpc_counts) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, grpc_counts
    # the fault met requests in flight (else this test proves nothing): the proxies handled them
    hit = retried + codes.count(503) + grpc_codes.count("UNAVAILABLE")
    assert hit >= 1, "no plain request was in flight on the killed replica"
    for _, body, _ in (p for p in plain if p[0] == 200):
        NoteResult.model_validate(body).check_offsets(NOTE)
    assert results and all(r["route"]["reason"] == "policy:fast-only" for r in results)
    for r in results:
        NoteResult.model_validate(r).check_offsets(NOTE)
    t0 = time.time()
    while (call("/readyz")[0] != 200 or serve.status().applications["clinie"].status != "RUNNING") and (
        time.time() - t0 < 90
    ):
        time.sleep(1)
    assert call("/readyz")[0] == 200
    assert {a["name"] for a in ingress()} != before, "the Ingress replica was not replaced"
    print(f"ingress kill: {len(results)} results through clinie.client")


def test_note_text_never_reaches_logs_or_metrics(service: dict[str, Any]):
    canary_note = f"{CANARY} denies chest pain."
    call("/v1/extract", {"text": canary_note, "policy": "fast-only", "note_id": "canary"})
    call("/v1/extract", {"text": canary_note * 20_000, "policy": "fast-only"})  # oversized: error path
    call("/v1/extract", {"text": canary_note, "policy": CANARY})  # unknown policy (echoes the name only)
    status, body, _ = call("/v1/extract", {"text": [canary_note]})  # wrong type: pydantic would echo it
    assert status == 400 and CANARY not in json.dumps(body)
    with urllib.request.urlopen(URL + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "clinie_notes_total" in metrics and CANARY not in metrics
    time.sleep(2)  # let the workers flush their logs
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    scanned = 0
    for path in logs.rglob("*"):
        if path.is_file():
            scanned += 1
            assert CANARY.encode() not in path.read_bytes(), f"note text in {path.name}"
    assert scanned > 5


def test_autoscaling_config_is_applied(service: dict[str, Any]):
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployments = details["applications"]["clinie"]["deployments"]
    local_yaml = yaml.safe_load(Path("serve_app/configs/serve.local.yaml").read_text())
    wanted = {d["name"]: d for d in local_yaml["applications"][0]["deployments"]}
    for name in ("Ingress", "FastTier", "LLMTier"):
        applied = deployments[name]["deployment_config"]
        assert applied["max_ongoing_requests"] == wanted[name]["max_ongoing_requests"]
        assert applied["max_queued_requests"] == wanted[name]["max_queued_requests"]
        auto = applied["autoscaling_config"]
        for key in ("min_replicas", "max_replicas", "target_ongoing_requests"):
            assert auto[key] == wanted[name]["autoscaling_config"][key], (name, key)
        assert applied["ray_actor_options"]["num_cpus"] == wanted[name]["ray_actor_options"]["num_cpus"]


def _ray_workers() -> list[tuple[Path, str]]:
    """(/proc entry, title) of every Ray worker process: Ray titles each by its actor
    (`ray::ProxyActor`, `ray::ServeController`, `ray::ServeReplica:clinie:FastTier`, ...)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, ValueError):
            continue  # not a process, or one that ended meanwhile
        if title.startswith("ray::"):
            found.append((proc, title))
    return found


def test_the_request_path_runs_above_the_model_replicas(service: dict[str, Any]):
    # Ray would start every worker at nice 15, below its daemons and any client on the machine:
    # clinie's local start puts the proxy, the Ingress and the controller at this process's nice,
    # and the model replicas model_nice below it (serve_app/worker_priority.py).
    base = os.getpriority(os.PRIO_PROCESS, 0)
    step = service["cfg"].model_nice
    assert step > 0, "the local config lowers the model replicas"
    nice: dict[str, list[int]] = {}
    for proc, title in _ray_workers():
        # `ray::ServeReplica:clinie:Ingress`, or with the method running: `...:Ingress.method`
        names = {part.split(".")[0] for part in title.removeprefix("ray::").split(":")}
        role = next((r for r in ("ProxyActor", "Ingress", "FastTier", "LLMTier") if r in names), None)
        if role:
            try:
                nice.setdefault(role, []).append(os.getpriority(os.PRIO_PROCESS, int(proc.name)))
            except OSError:
                continue  # ended meanwhile
    assert set(nice) >= {"ProxyActor", "Ingress", "FastTier"}, nice
    assert all(n == base for role in ("ProxyActor", "Ingress") for n in nice[role]), nice
    assert all(n == min(19, base + step) for role in ("FastTier", "LLMTier") for n in nice.get(role, [])), nice


def test_ray_upkeep_is_light_and_replica_logs_stay_in_files(service: dict[str, Any]):
    # serve_app/ray_upkeep.py: the Serve controller loops every 0.5 s, and Serve's log lines go to
    # its files only, not also to the workers' stderr (which Ray's log monitor tails and ships).
    controllers = [proc for proc, title in _ray_workers() if "ServeController" in title]
    assert controllers, "no Serve controller process"
    env = dict(kv.split(b"=", 1) for kv in (controllers[0] / "environ").read_bytes().split(b"\0") if b"=" in kv)
    assert env.get(b"RAY_SERVE_CONTROL_LOOP_INTERVAL_S") == b"0.5"
    assert call("/v1/extract", {"text": NOTE, "policy": "fast-only"})[0] == 200
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    time.sleep(2)  # let the replicas flush their log files
    access = [
        p for p in (logs / "serve").glob("replica_clinie_Ingress_*.log") if b"POST /v1/extract 200" in p.read_bytes()
    ]
    assert access, "the Ingress's access lines are not in Serve's log files"
    streams = [p for p in logs.glob("worker-*") if p.suffix in (".err", ".out")]
    assert streams, "no worker stdout/stderr files to check"
    assert not [p.name for p in streams if b"POST /v1/extract" in p.read_bytes()]
    assert service["svc"].serve_logs == logs / "serve"  # what `clinie serve` tells the operator


def test_policy_hot_reload_keeps_serving(service: dict[str, Any], policies_file: Path):
    from serve_app import local

    cfg, raw = service["cfg"], service["raw"]
    new = {**POLICIES, "policies": {**POLICIES["policies"], "added": {"kind": "fast-only"}}}
    policies_file.write_text(yaml.safe_dump(new))
    with cf.ThreadPoolExecutor(1) as pool:  # keep requests flowing during the reload
        background = pool.submit(
            lambda: [call("/v1/extract", {"text": NOTE, "policy": "fast-only"})[0] for _ in range(5)]
        )
        local.deploy(cfg, raw)  # only the Ingress's user_config (the file's digest) changed
        assert background.result() == [200] * 5
    deadline = time.time() + 30
    while call("/v1/extract", {"text": NOTE, "policy": "added"})[0] != 200 and time.time() < deadline:
        time.sleep(0.5)
    status, body, _ = call("/v1/extract", {"text": NOTE, "policy": "added"})
    assert status == 200 and body["route"]["reason"] == "policy:added"

    # a broken file is refused; the running policies stay in force and the refusal is visible
    policies_file.write_text(yaml.safe_dump({**new, "policies": {"default": {"kind": "threshold"}}}))
    local.deploy(cfg, raw)
    _, ready, _ = call("/readyz")
    assert "policies.default.signal" in ready["components"]["router"]["last_error"]
    assert call("/v1/extract", {"text": NOTE, "policy": "added"})[0] == 200


def test_llm_tier_removed_mid_run_falls_back_to_the_fast_tier(service: dict[str, Any]):
    """The LLM tier's replica is killed while clients send `llm-only` notes: every request is
    answered — by the fast tier, saying why, while the LLM tier is gone — or refused with
    `Retry-After`; never a 500, never later than its deadline; the service stays ready."""
    import ray

    wait_llm_ready()
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "LLMTier" in a["name"] and a["namespace"]]
    assert replicas, ray.util.list_named_actors(all_namespaces=True)
    stop = time.time() + 10
    answers: list[tuple[int, dict, dict, float]] = []

    def client() -> None:
        while time.time() < stop:
            t0 = time.perf_counter()
            status, body, headers = call("/v1/extract", {"text": NOTE, "policy": "llm-only", "deadline_ms": 20_000})
            answers.append((status, body, headers, time.perf_counter() - t0))

    with cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client) for _ in range(2)]
        time.sleep(2)
        for a in replicas:
            ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
        killed_at = time.time()
        for f in futures:
            f.result()
    codes = [a[0] for a in answers]
    assert set(codes) <= {200, 429, 503}, codes
    assert all(h.get("retry-after") for s, _, h, _ in answers if s != 200)
    assert all(seconds < 20 + 2 for *_, seconds in answers)
    fallbacks = [b for s, b, _, _ in answers if s == 200 and b["route"]["tier"] == "bert"]
    reasons = {b["route"]["reason"] for b in fallbacks}
    assert all(r.startswith("llm_") for r in reasons), reasons  # a fast answer to llm-only says why
    assert reasons & {"llm_error", "llm_tier_unavailable"}, f"the kill at {killed_at:.0f} was not seen: {reasons}"
    for b in fallbacks:
        NoteResult.model_validate(b).check_offsets(NOTE)
    _, ready, _ = call("/readyz")
    assert ready["ready"] is True  # the fast tier still answers everything


def test_llm_engine_killed_under_load_is_replaced(service: dict[str, Any]):
    """The LLM engine's own process dies (SIGKILL) while clients send `llm-only` notes: every
    request is answered (the fast tier's answer, with the reason, while the LLM tier cannot), the
    LLM tier reports itself failed, its replica exits, and Serve replaces it with a fresh engine:
    strictly ready again within 3 minutes."""
    import signal

    import psutil

    from benchmarks.processes import ray_process_group

    wait_llm_ready()
    (replica,) = [p for p in psutil.process_iter() if ray_process_group(p) == "ServeReplica:clinie:LLMTier"]
    engine = max(replica.children(recursive=True), key=lambda p: p.memory_info().rss)
    stop = time.time() + 15
    answers: list[tuple[int, dict]] = []

    def client() -> None:
        while time.time() < stop:
            status, body, _ = call("/v1/extract", {"text": NOTE, "policy": "llm-only", "deadline_ms": 20_000})
            answers.append((status, body))

    with cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client) for _ in range(2)]
        time.sleep(3)
        os.kill(engine.pid, signal.SIGKILL)
        for f in futures:
            f.result()
    assert answers and all(s == 200 for s, _ in answers), [s for s, _ in answers]
    reasons = {b["route"]["reason"] for _, b in answers}
    assert reasons & {"llm_error", "llm_tier_unavailable"}, reasons  # the fault was seen and said
    t0 = time.perf_counter()
    while call("/readyz?strict=true")[0] != 200:
        assert time.perf_counter() - t0 < 180, call("/readyz")[1]["components"]["llm_tier"]
        time.sleep(2)
    status, body, _ = call("/v1/extract", {"text": NOTE, "policy": "llm-only"})
    assert status == 200 and body["route"]["tier"] == "llm", body["route"]
    assert not replica.is_running(), "the replica whose engine died is still running"
