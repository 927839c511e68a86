"""Generated bad and odd requests against a running service, over HTTP and gRPC.

Each case is drawn from a seeded generator (`cases`): random bytes, random JSON shapes, deep
nesting, wrong types, odd Unicode (lone surrogates, NUL, RTL marks, combining marks, CRLF, emoji),
oversized fields, random policies and deadlines; about one case in five is a well-formed note so
that the odd text reaches the models. Invariants checked for every answer (`check`):
- never a 5xx other than 503, and 504 only as `deadline_exceeded` (an explicit answer to a
  deadline the case chose);
- every 4xx carries the contract's body `{"error": {"code", "message"}}`;
- every 200 has exact offsets: each span's `text` is `note[start:end]`;
- nothing unanswered (a transport error or a timeout is counted as such);
- the service is ready afterwards.

    python -m benchmarks.fuzz --url http://127.0.0.1:8000 --grpc 127.0.0.1:9000 -n 10000

With no `--url`, it starts the application locally on the embedded default models (no LLM tier).
Writes `fuzz.json` (counts per status and code, violations) under `--output-dir`. The suite runs a
few hundred of the same cases (tests/integration/test_serve_e2e.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

ODD = ["\u0000", "\u202e", "\u0301", "\r\n", "\U0001f600", "\u200b", "\ufeff", "\u05d0\u05d1", "\t", "\x7f"]
WORDS = ["Patient", "denies", "chest", "pain", "aspirin", "81", "mg", "daily", "No", "fever", "BP", "120/80", "."]
KIND_WEIGHTS = {
    "note": 25,
    "bytes": 12,
    "shape": 12,
    "nested": 10,
    "types": 12,
    "oversized": 2,
    "batch": 15,
    "surrogate": 12,
}
POLICIES = ["default", "fast-only", "", "nope", "DEFAULT", "fast-only ", "\u0000", "a" * 200]


@dataclass
class Case:
    """One request: a JSON-able body or raw bytes, to `endpoint` (`extract` or `batch`)."""

    endpoint: str
    body: Any = None
    raw: bytes | None = None
    kind: str = ""

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


def _text(rng: random.Random) -> str:
    parts = [rng.choice(WORDS + ODD) for _ in range(rng.randint(1, 40))]
    return " ".join(parts) if rng.random() < 0.5 else "".join(parts)


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice([None, True, 0, -1, 1.5, float("nan"), float("inf"), "", _text(rng), 10**30])
    if roll < 0.65:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["text", "note_id", "policy", "deadline_ms", "notes", "x"]): _value(rng, depth + 1)}


def _deadline(rng: random.Random) -> Any:
    return rng.choice([None, 2000, 30_000, 300_000, 0, -5, 1e9, "100", float("nan"), True, [1]])


def _note(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"text": _text(rng)}
    if rng.random() < 0.5:
        body["policy"] = rng.choice(POLICIES)
    if rng.random() < 0.5:
        body["deadline_ms"] = _deadline(rng)
    if rng.random() < 0.3:
        body["note_id"] = rng.choice([_text(rng), 5, None, "n" * 300])
    return body


def _one_case(rng: random.Random) -> Case:
    # an oversized body costs a megabyte each: a few of them show the limit holds
    kinds, weights = zip(*KIND_WEIGHTS.items(), strict=True)
    kind = rng.choices(kinds, weights)[0]
    endpoint = "batch" if kind == "batch" or rng.random() < 0.1 else "extract"
    if kind == "note":
        return Case(endpoint if endpoint == "extract" else "extract", _note(rng), kind=kind)
    if kind == "bytes":
        return Case(endpoint, raw=rng.randbytes(rng.randint(0, 200)), kind=kind)
    if kind == "shape":
        return Case(endpoint, _value(rng), kind=kind)
    if kind == "nested":
        depth = rng.choice([20, 40, 1000, 100_000])
        return Case(
            endpoint, raw=(b"[" * depth + b"]" * depth) if rng.random() < 0.5 else b'{"text":' + b"[" * depth, kind=kind
        )
    if kind == "types":
        return Case(endpoint, {"text": _value(rng), "policy": _value(rng), "deadline_ms": _value(rng)}, kind=kind)
    if kind == "oversized":
        return Case("extract", {"text": "a" * rng.choice([200_001, 200_001, 1_000_000])}, kind=kind)
    if kind == "surrogate":
        raw = (
            b'{"text": "pain \\ud800 here"}'
            if rng.random() < 0.5
            else '{"text": "x\udcff"}'.encode("utf-8", "surrogatepass")
        )
        return Case("extract", raw=raw, kind=kind)
    notes = [rng.choice([_note(rng), _value(rng), {"text": None}]) for _ in range(rng.randint(0, 80))]
    return Case("batch", {"notes": notes, "policy": rng.choice(POLICIES)}, kind=kind)


def cases(seed: int, n: int) -> list[Case]:
    rng = random.Random(seed)
    return [_one_case(rng) for _ in range(n)]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def add(self, transport: str, status: Any, code: str | None, problem: str | None, case: Case) -> None:
        self.statuses[f"{transport} {status}"] += 1
        if code:
            self.codes[f"{transport} {code}"] += 1
        if problem:
            self.violations.append(f"{transport} {case.kind}/{case.endpoint}: {problem}")


def _offsets_problem(result: dict[str, Any], text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    for group in ("entities", "modifiers"):
        for s in result.get(group) or []:
            if text[s["start"] : s["end"]] != s["text"]:
                return f"offset mismatch in {group}"
    return None


def check(status: int, body: Any, case: Case) -> str | None:
    """What is wrong with this HTTP answer, or None."""
    if status >= 500 and status != 503 and not (status == 504 and _code(body) == "deadline_exceeded"):
        return f"status {status} ({_code(body)})"
    if 400 <= status < 600:
        err = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)):
            return f"status {status} without the contract's error body"
    if status == 200:
        if case.endpoint == "extract":
            return _offsets_problem(body, (case.body or {}).get("text") if isinstance(case.body, dict) else None)
        notes = (case.body or {}).get("notes") if isinstance(case.body, dict) else None
        for slot, note in zip(body.get("results", []), _list(notes), strict=False):
            text = note.get("text") if isinstance(note, dict) else None
            if "error" not in slot and (problem := _offsets_problem(slot, text)):
                return problem
    return None


def _code(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    return err.get("code") if isinstance(err, dict) else None


def send_http(url: str, case: Case, key: str | None, timeout: float = 120) -> tuple[Any, Any]:
    path = "/v1/extract/batch" if case.endpoint == "batch" else "/v1/extract"
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url + path, data=case.payload(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except ValueError:
            return e.code, {"unparsed": raw[:200].decode("latin-1")}
    except (OSError, ValueError) as exc:
        return "unanswered", {"error": type(exc).__name__}


def send_grpc(target: str, case: Case, key: str | None, timeout: float = 120) -> tuple[Any, str | None]:
    """The case's text fields as a protobuf message (or its raw bytes as a message body)."""
    import grpc

    from clinie.proto import clinie_pb2 as pb

    method = "/clinie.v1.Clinie/ExtractBatch" if case.endpoint == "batch" else "/clinie.v1.Clinie/Extract"
    raw = case.raw if case.raw is not None else _proto_bytes(case, pb)
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(raw, metadata=(("authorization", f"Bearer {key}"),) if key else (), timeout=timeout)
            return "OK", None
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() is not None else "UNKNOWN"
            try:
                detail = json.loads(exc.details() or "{}").get("error", {}).get("code")
            except ValueError:
                detail = None
            return code, detail


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _proto_bytes(case: Case, pb: Any) -> bytes:
    body = case.body if isinstance(case.body, dict) else {}

    def s(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, default=str)

    def clean(v: str) -> str:
        return v.encode("utf-8", "replace").decode("utf-8")

    # an absent policy stays absent (`default`); present and empty is an unknown policy, as over HTTP
    policy = {"policy": clean(s(body["policy"]))} if "policy" in body else {}
    if case.endpoint == "batch":
        notes = [
            pb.NoteInput(text=clean(s(n.get("text"))) if isinstance(n, dict) else "") for n in _list(body.get("notes"))
        ]
        return pb.ExtractBatchRequest(notes=notes, **policy).SerializeToString()
    msg = pb.ExtractRequest(text=clean(s(body.get("text", ""))), **policy)
    return msg.SerializeToString()


GRPC_OK = {"OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


def run(url: str, grpc_target: str | None, n: int, seed: int, key: str | None, workers: int) -> dict[str, Any]:
    tally = Tally()
    batch = cases(seed, n)

    def one(case: Case) -> None:
        status, body = send_http(url, case, key)
        tally.add(
            "http", status, _code(body), "unanswered" if status == "unanswered" else check(status, body, case), case
        )
        if grpc_target is not None:
            gstatus, gcode = send_grpc(grpc_target, case, key)
            tally.add("grpc", gstatus, gcode, None if gstatus in GRPC_OK else f"status {gstatus}", case)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(tqdm(pool.map(one, batch), total=len(batch), desc="fuzz", unit="case"))
    ready = send_http(
        url.rstrip("/"), Case("extract", {"text": "Patient denies chest pain.", "policy": "fast-only"}), key
    )
    return {
        "cases": n,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "codes": dict(sorted(tally.codes.items())),
        "violations": tally.violations[:200],
        "violation_count": len(tally.violations),
        "answers_afterwards": ready[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="HTTP base URL of a running service (default: start one locally).")
    ap.add_argument("--grpc", help="gRPC host:port of the same service (also fuzzed when given).")
    ap.add_argument("-n", type=int, default=10_000, help="Cases (default 10,000).")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=8, help="Concurrent senders.")
    ap.add_argument("--output-dir", default="benchmarks/results", help="Where fuzz.json goes.")
    args = ap.parse_args(argv)
    key = os.environ.get("CLINIE_API_KEY")
    url, target = args.url, args.grpc
    if url is None:
        from serve_app import local

        cfg, raw = local.local_app_config(llm_enabled=False)
        svc = local.start(local.prepare_models(cfg), raw)
        local.wait_ready(svc.http_url, timeout_s=300)
        url, target = svc.http_url, svc.grpc_target
    try:
        report = run(url.rstrip("/"), target, args.n, args.seed, key, args.workers)
    finally:
        if args.url is None:
            local.stop()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "violations"}, indent=2))
    return 0 if report["violation_count"] == 0 and report["answers_afterwards"] == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
