"""Load benchmark of the served application, with the in-process pipeline as the baseline.

In one run, on the same real unlabelled notes and the same machine:
1. in process: `Pipeline.run(notes, policy="fast-only")` (what `clinie extract` does) -> notes/s;
2. served, closed loop: a bounded number of concurrent clients over HTTP, then over gRPC, then one
   client over `/v1/extract/batch` (fast-only) -> notes/s, p50/p95/p99, errors; the ratio
   served / in-process;
3. served, open loop at `--overload` x the measured sustainable rate (Poisson arrivals, bounded
   by count and time) -> how many got a result or a 429/503, how fast the refusals came, whether
   anything hung, and the Ray processes' memory before and after;
4. served with the `default` policy (router + LLM tier when deployed) -> escalation rate.
Loopback only. Writes `load.json` and `load.png` under `--output-dir`.

    python -m benchmarks.load [--notes 60] [--concurrency 2] [--batch 8] [--overload 5] [--seconds 20] [--llm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import write_report
from clinie.inputs import NoteInput

UNLABELED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtsamples-unlabeled" / "notes.jsonl"


def load_notes(path: Path, n: int, max_chars: int = 20_000) -> list[dict[str, str]]:
    notes = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("text") and len(row["text"]) <= max_chars:
            notes.append({"note_id": str(row.get("note_id")), "text": row["text"]})
        if len(notes) == n:
            break
    return notes


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def summary(latencies_ms: list[float], codes: list[int], wall_s: float) -> dict[str, Any]:
    ok = sum(c == 200 for c in codes)
    return {
        "requests": len(codes),
        "ok": ok,
        "rejected_429": codes.count(429),
        "rejected_503": codes.count(503),
        "other_errors": len(codes) - ok - codes.count(429) - codes.count(503),
        "wall_s": round(wall_s, 2),
        "notes_per_s": round(ok / wall_s, 3) if wall_s else 0.0,
        "p50_ms": pct(latencies_ms, 50),
        "p95_ms": pct(latencies_ms, 95),
        "p99_ms": pct(latencies_ms, 99),
    }


async def http_closed(url: str, notes: list[dict[str, str]], concurrency: int, policy: str) -> dict[str, Any]:
    import httpx

    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for n in notes:
        queue.put_nowait(n)
    lat: list[float] = []
    codes: list[int] = []
    escalated = 0
    async with httpx.AsyncClient(timeout=300) as client:

        async def worker() -> None:
            nonlocal escalated
            while not queue.empty():
                note = queue.get_nowait()
                while True:
                    t0 = time.perf_counter()
                    r = await client.post(f"{url}/v1/extract", json={**note, "policy": policy})
                    if r.status_code in (429, 503):  # a well-behaved client honours Retry-After
                        codes.append(r.status_code)
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    lat.append((time.perf_counter() - t0) * 1000)
                    codes.append(r.status_code)
                    if r.status_code == 200 and r.json()["route"]["escalated"]:
                        escalated += 1
                    break

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    out = summary(lat, codes, wall)
    out["escalated_notes"] = escalated
    return out


async def http_batch_closed(url: str, notes: list[dict[str, str]], batch: int, concurrency: int) -> dict[str, Any]:
    """`/v1/extract/batch` with `batch` notes per request: how a bulk client gets batch efficiency."""
    import httpx

    chunks = [notes[i : i + batch] for i in range(0, len(notes), batch)]
    queue: asyncio.Queue[list[dict[str, str]]] = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)
    lat: list[float] = []
    codes: list[int] = []
    ok_notes = 0
    async with httpx.AsyncClient(timeout=300) as client:

        async def worker() -> None:
            nonlocal ok_notes
            while not queue.empty():
                chunk = queue.get_nowait()
                while True:
                    t0 = time.perf_counter()
                    r = await client.post(f"{url}/v1/extract/batch", json={"notes": chunk, "policy": "fast-only"})
                    codes.append(r.status_code)
                    if r.status_code in (429, 503):
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    lat.append((time.perf_counter() - t0) * 1000)
                    if r.status_code == 200:
                        ok_notes += sum("error" not in x for x in r.json()["results"])
                    break

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    out = summary(lat, codes, wall)
    out.update({"batch_notes": batch, "notes_ok": ok_notes, "notes_per_s": round(ok_notes / wall, 3)})
    return out


async def grpc_closed(target: str, notes: list[dict[str, str]], concurrency: int) -> dict[str, Any]:
    import grpc

    from serve_app.proto import clinie_pb2 as pb
    from serve_app.proto import clinie_pb2_grpc as pbg

    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for n in notes:
        queue.put_nowait(n)
    lat: list[float] = []
    codes: list[int] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pbg.ClinieStub(channel)

        async def worker() -> None:
            while not queue.empty():
                note = queue.get_nowait()
                while True:
                    t0 = time.perf_counter()
                    try:
                        await stub.Extract(
                            pb.ExtractRequest(text=note["text"], note_id=note["note_id"], policy="fast-only"),
                            timeout=300,
                        )
                        lat.append((time.perf_counter() - t0) * 1000)
                        codes.append(200)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                            codes.append(429)
                            await asyncio.sleep(1.0)
                            continue
                        codes.append(500)
                        break

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return summary(lat, codes, wall)


async def http_open(url: str, notes: list[dict[str, str]], rate: float, seconds: float, cap: int) -> dict[str, Any]:
    """Poisson arrivals at `rate`/s for `seconds` (at most `cap` requests); no retries."""
    import httpx

    rng = random.Random(7)
    results: list[tuple[int, float]] = []
    pending: list[asyncio.Task] = []
    limits = httpx.Limits(max_connections=cap, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(note: dict[str, str]) -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/extract", json={**note, "policy": "fast-only"})
                results.append((r.status_code, (time.perf_counter() - t0) * 1000))
            except httpx.HTTPError:
                results.append((-1, (time.perf_counter() - t0) * 1000))

        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < seconds and i < cap:
            pending.append(asyncio.create_task(one(notes[i % len(notes)])))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        sent_wall = time.perf_counter() - start
        _, not_done = await asyncio.wait(pending, timeout=120)
        for t in not_done:
            t.cancel()
    codes = [c for c, _ in results]
    refused = [ms for c, ms in results if c in (429, 503)]
    ok = [ms for c, ms in results if c == 200]
    return {
        "offered_rate_per_s": round(rate, 3),
        "sent": i,
        "send_wall_s": round(sent_wall, 2),
        "hung": len(not_done),
        "ok": len(ok),
        "refused_429_503": len(refused),
        "other": len(codes) - len(ok) - len(refused),
        "refusal_p50_ms": pct(refused, 50),
        "refusal_max_ms": round(max(refused), 1) if refused else None,
        "ok_p50_ms": pct(ok, 50),
        "ok_p99_ms": pct(ok, 99),
        "ok_max_ms": round(max(ok), 1) if ok else None,
        "answered_within_1s": round(sum(ms <= 1000 for _, ms in results) / max(len(results), 1), 4),
        "refused_within_1s": round(sum(ms <= 1000 for ms in refused) / max(len(refused), 1), 4),
    }


def ray_rss_mb() -> float:
    import psutil

    total = 0
    for p in psutil.process_iter(["name", "cmdline", "memory_info"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if "ray::" in cmd or "raylet" in cmd or "ray/" in cmd or (p.info.get("name") or "").startswith("ray::"):
            total += p.info["memory_info"].rss if p.info.get("memory_info") else 0
    return round(total / 2**20, 1)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["in-process", "HTTP", "gRPC", "HTTP batch"]
    vals = [report[k]["notes_per_s"] for k in ("in_process", "http", "grpc", "http_batch")]
    a.bar(labels, vals, color=["#777", "#1f77b4", "#2ca02c", "#9467bd"])
    a.set_ylabel("notes / s (fast-only)")
    a.set_title("Throughput, same notes, same machine")
    for x, v in enumerate(vals):
        a.text(x, v, f"{v:.2f}", ha="center", va="bottom")
    o = report["overload"]
    parts = [o["ok"], o["refused_429_503"], o["other"], o["hung"]]
    b.bar(["result", "429/503", "other", "hung"], parts, color=["#2ca02c", "#ff7f0e", "#d62728", "#000"])
    b.set_title(f"Open loop at {report['overload_factor']}x sustainable ({o['offered_rate_per_s']}/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notes", type=int, default=60, help="Unlabelled notes to send (bounded).")
    p.add_argument(
        "--concurrency", type=int, default=2, help="Closed-loop single-note clients (2 keeps under admission)."
    )
    p.add_argument("--batch", type=int, default=8, help="Notes per /v1/extract/batch request (one client).")
    p.add_argument("--overload", type=float, default=5.0, help="Open-loop rate as a multiple of the sustainable one.")
    p.add_argument("--seconds", type=float, default=20.0, help="Open-loop duration (bounded).")
    p.add_argument("--model", help="Fast-tier model directory (default: the embedded default).")
    p.add_argument("--llm", action="store_true", help="Deploy the LLM tier too (default: fast tier + router only).")
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--grpc-port", type=int, default=19400)
    p.add_argument("--output-dir", default="benchmarks/results")
    args = p.parse_args(argv)

    from deployments.fast_tier.default import resolve_model_dir
    from serve_app import local
    from serve_app.pipeline import Pipeline

    notes = load_notes(UNLABELED, args.notes)
    model_dir = resolve_model_dir(args.model)
    report: dict[str, Any] = {"notes": len(notes), "chars": sum(len(n["text"]) for n in notes)}

    pipe = Pipeline(model_dir=model_dir)
    inputs = [NoteInput(note_id=n["note_id"], text=n["text"]) for n in notes]
    pipe.run(inputs[:3], policy="fast-only")  # warm-up
    t0 = time.perf_counter()
    pipe.run(inputs, policy="fast-only")
    wall = time.perf_counter() - t0
    report["in_process"] = {"wall_s": round(wall, 2), "notes_per_s": round(len(notes) / wall, 3)}
    print(f"in process: {report['in_process']['notes_per_s']:.2f} notes/s", flush=True)
    del pipe

    cfg, raw = local.local_app_config(fast_tier_model=str(model_dir), llm_enabled=args.llm)
    svc = local.start(cfg, raw, port=args.port, grpc_port=args.grpc_port)
    report["start_to_ready_s"] = round(svc.started_s + local.wait_ready(svc.http_url), 2)
    print(f"served: ready {report['start_to_ready_s']} s after start", flush=True)
    try:
        asyncio.run(http_closed(svc.http_url, notes[:4], 2, "fast-only"))  # warm-up
        report["http"] = asyncio.run(http_closed(svc.http_url, notes, args.concurrency, "fast-only"))
        report["grpc"] = asyncio.run(grpc_closed(svc.grpc_target, notes, args.concurrency))
        report["http_batch"] = asyncio.run(http_batch_closed(svc.http_url, notes, args.batch, 1))
        base = report["in_process"]["notes_per_s"]
        report["served_over_in_process"] = {
            "http": round(report["http"]["notes_per_s"] / base, 3),
            "grpc": round(report["grpc"]["notes_per_s"] / base, 3),
            "http_batch": round(report["http_batch"]["notes_per_s"] / base, 3),
        }
        print(f"HTTP {report['http']}\ngRPC {report['grpc']}\nHTTP batch {report['http_batch']}", flush=True)

        sustainable = max(report[k]["notes_per_s"] for k in ("http", "grpc", "http_batch"))
        report["overload_factor"] = args.overload
        mem_before = ray_rss_mb()
        cap = int(sustainable * args.overload * args.seconds) + 10
        report["overload"] = asyncio.run(http_open(svc.http_url, notes, sustainable * args.overload, args.seconds, cap))
        time.sleep(3)
        report["ray_rss_mb"] = {"before_overload": mem_before, "after_overload": ray_rss_mb()}
        print(f"overload {report['overload']}\nmemory {report['ray_rss_mb']}", flush=True)

        report["default_policy"] = asyncio.run(http_closed(svc.http_url, notes[:20], args.concurrency, "default"))
        d = report["default_policy"]
        d["note_escalation_rate"] = round(d["escalated_notes"] / max(d["ok"], 1), 3)
        print(f"default policy {d}", flush=True)
    finally:
        local.stop()

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out / "load.json")
    plot(report, out / "load.png")
    print(f"wrote {out / 'load.json'} and {out / 'load.png'}")
    return report


if __name__ == "__main__":
    main()
