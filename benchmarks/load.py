"""Load benchmark of the served application: scaling, deadlines, refusals, throughput.

It targets a running deployment (`--url`, `--grpc`; `--ray-address` to record replica counts) or,
with neither, starts the application locally on the embedded default models (and then also
measures the throughput baselines on the same notes, with the machine to themselves, before the
service starts and again after it stops: each is reported as the mean of the two, both kept).

Scenarios run in order (`--scenario`, repeatable; the default is the README's run):
- `closed:CLIENTS:SECONDS[:DEADLINE_MS]`  closed-loop clients over HTTP, one note a request;
- `grpc:CLIENTS:SECONDS[:DEADLINE_MS]`    the same over gRPC;
- `batch:CLIENTS:SECONDS:NOTES[:DEADLINE_MS]` closed-loop clients over HTTP, NOTES notes a request
                                          (`/v1/extract/batch`; answered notes count one by one);
- `open:RATE:SECONDS[:DEADLINE_MS]`       Poisson arrivals at RATE requests/s (bounded count);
- `step:C1,C2,...:SECONDS`                closed loop, the client count stepping up every SECONDS;
- `cooldown:SECONDS`                      no load; waits (at most SECONDS) for every deployment to
                                          go back to its minimum replicas, and reports how long;
- `idle:SECONDS`                          no load for SECONDS: the cores the idle service keeps busy.
HTTP requests go through benchmarks/raw_http.py (a lean HTTP/1.1 client: on a machine whose cores the
service shares, a heavier client's own CPU becomes the tail it reports) or, with `--client clinie`
and for gRPC, through clinie.client (AsyncClient, retries off); every attempt is one sample, the
API key from `CLINIE_API_KEY` if set. Clients do not wait out `Retry-After` unless
`--honour-retry-after` (the worst case for the service: a refused client asks again at once). All
traffic goes to the given (loopback) address; every loop is bounded in time and count.

While it runs, replica counts per deployment and per node are polled every 2 s from the Serve
controller, and each scenario reports where this machine's cores went (`cpu_cores`: average busy
cores per role, e.g. each deployment's replicas, the proxy, Ray's daemons, this benchmark's own
clients, and `machine` for all of them) and its answered notes/s at full capacity (the stretch in
which FastTier ran at its max_replicas: the served throughput at saturation, set against the
in-process baseline in `served_over_in_process_at_saturation`, and against one single-threaded
pipeline per core in separate processes, what the replicas could do with the machine to
themselves, in `served_over_one_engine_per_core_at_saturation`). HTTP scenarios also say where
their 429s came from: `refused_429_by_ingress` (the Ingress's own /metrics; exact with one Ingress
replica) and `refused_429_at_front_door` (the rest: Ray's proxy, from the Ingress's shed hints,
serve_app/shedding.py). Writes `load.json` (summaries, per-5-s timeline, with the refusals over
0.5 s per bucket) and `load.png` (requests/s, p50/p95/p99, refusals and replicas over time) under
`--output-dir`.

    python -m benchmarks.load                       # local app, the README's scenarios
    python -m benchmarks.load --url http://127.0.0.1:8000 --ray-address auto --scenario closed:8:60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import random
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.processes import CpuMeter
from benchmarks.raw_http import RawHttpClient, RawHttpError
from benchmarks.report import cpu_info, write_report
from clinie.client import AsyncClient, ClinieError
from clinie.inputs import NoteInput
from serve_app import front_door
from serve_app.front_door import FrontDoor

UNLABELED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtsamples-unlabeled" / "notes.jsonl"
DEFAULT_SCENARIOS = ["closed:8:90", "cooldown:180", "closed:48:30:3000", "cooldown:180"]
APP = "clinie"


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


@dataclass
class Sample:
    """One request: when it was sent and answered (seconds since the run's start), its status."""

    sent: float
    done: float
    status: int  # HTTP status; gRPC codes mapped to their HTTP twins; -1: transport error / hang
    scenario: str
    retry_after: float | None = None
    notes: int = 1  # notes answered with a result (a batch request's; 0 when refused)

    @property
    def ms(self) -> float:
        return (self.done - self.sent) * 1000


class Target:
    """Where requests go: HTTP through benchmarks/raw_http.py (`raw`, plain http) or clinie.client,
    gRPC through clinie.client with its retries off. Each attempt is one sample, and a refused
    client's wait is this benchmark's choice, `--honour-retry-after`."""

    def __init__(
        self, url: str | None, grpc_target: str | None, policy: str, honour_retry_after: bool, raw: bool = True
    ):
        self.url, self.grpc_target, self.policy = url, grpc_target, policy
        self.honour = honour_retry_after
        self.raw = raw  # HTTP through benchmarks/raw_http.py (plain http only), not clinie.client
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def client(self, kind: str, connections: int) -> AsyncClient | RawHttpClient:
        if kind == "grpc":
            assert self.grpc_target, "--grpc TARGET is needed for grpc scenarios"
            url = f"grpc://{self.grpc_target}"
        else:
            assert self.url, "--url is needed for HTTP scenarios"
            url = self.url
            if self.raw and url.startswith("http://"):
                return RawHttpClient(url, os.environ.get("CLINIE_API_KEY"), max_connections=connections)
        return AsyncClient(
            url, api_key=os.environ.get("CLINIE_API_KEY"), timeout=330, retries=0, max_connections=connections
        )

    async def send(
        self,
        client: AsyncClient | RawHttpClient,
        notes: list[dict[str, str]],
        deadline_ms: float | None,
        scenario: str,
        batch: bool,
    ) -> Sample:
        if isinstance(client, RawHttpClient):
            return await self._send_raw(client, notes, deadline_ms, scenario, batch)
        sent = self.now()
        try:
            if batch:
                results = await client.extract_batch(notes, self.policy, deadline_ms or None)
                return Sample(sent, self.now(), 200, scenario, notes=sum("error" not in r for r in results))
            await client.extract(notes[0]["text"], notes[0]["note_id"], self.policy, deadline_ms or None)
            return Sample(sent, self.now(), 200, scenario)
        except ClinieError as exc:
            # the client's own failures (no connection, no answer in 330 s) count as transport errors
            status = -1 if exc.code in ("unreachable", "timeout") else exc.status
            return Sample(sent, self.now(), status, scenario, exc.retry_after, notes=0)

    async def _send_raw(
        self, client: RawHttpClient, notes: list[dict[str, str]], deadline_ms: float | None, scenario: str, batch: bool
    ) -> Sample:
        """The same request as clinie.client's (the contract's body), timed around the exchange only."""
        extra: dict[str, Any] = {"policy": self.policy}
        if deadline_ms:
            extra["deadline_ms"] = deadline_ms
        if batch:
            items = [{"text": n["text"], "note_id": n["note_id"]} for n in notes]
            path, body = "/v1/extract/batch", {"notes": items, **extra}
        else:
            path, body = "/v1/extract", {"text": notes[0]["text"], "note_id": notes[0]["note_id"], **extra}
        sent = self.now()
        try:
            status, headers, answer = await client.post_json(path, body)
        except RawHttpError:
            return Sample(sent, self.now(), -1, scenario, notes=0)
        done = self.now()
        if status != 200:
            retry = headers.get("retry-after")
            return Sample(sent, done, status, scenario, float(retry) if retry else None, notes=0)
        answered = sum("error" not in r for r in json.loads(answer)["results"]) if batch else 1
        return Sample(sent, done, 200, scenario, notes=answered)


async def closed_loop(
    target: Target,
    notes: list[dict[str, str]],
    clients: list[int],
    seconds: float,
    deadline_ms: float | None,
    kind: str,
    batch: int = 0,
) -> list[Sample]:
    """`clients[k]` concurrent clients during the k-th `seconds`-long step; each sends, waits for
    the answer, sends the next note (the notes cycle); `batch` > 0: that many notes a request."""
    samples: list[Sample] = []
    size = f":{batch}" if batch else ""
    name = f"{kind}:{','.join(map(str, clients))}:{seconds:g}{size}" + (f":{deadline_ms:g}" if deadline_ms else "")
    start = target.now()
    end = start + seconds * len(clients)
    counter = iter(range(10**9))

    async def client(index: int, api: AsyncClient) -> None:
        step = 0
        while target.now() < end:
            while step < len(clients) and target.now() >= start + seconds * (step + 1):
                step += 1
            if step >= len(clients):
                break
            if index >= clients[step]:  # not active in this step yet
                await asyncio.sleep(0.05)
                continue
            chosen = [notes[next(counter) % len(notes)] for _ in range(max(batch, 1))]
            s = await target.send(api, chosen, deadline_ms, name, batch > 0)
            samples.append(s)
            if target.honour and s.retry_after:
                await asyncio.sleep(s.retry_after)

    most = max(clients)
    async with target.client(kind, most + 4) as api:
        await asyncio.gather(*(client(i, api) for i in range(most)))
    return samples


async def open_loop(
    target: Target, notes: list[dict[str, str]], rate: float, seconds: float, deadline_ms: float | None
) -> list[Sample]:
    """Poisson arrivals at `rate`/s for `seconds` (at most rate x seconds x 2 + 10 requests)."""
    rng = random.Random(7)
    samples: list[Sample] = []
    name = f"open:{rate:g}:{seconds:g}" + (f":{deadline_ms:g}" if deadline_ms else "")
    cap = int(rate * seconds * 2) + 10
    async with target.client("http", cap) as api:

        async def one(note: dict[str, str]) -> None:
            samples.append(await target.send(api, [note], deadline_ms, name, False))

        pending = []
        start = target.now()
        i = 0
        while target.now() - start < seconds and i < cap:
            pending.append(asyncio.create_task(one(notes[i % len(notes)])))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        _, not_done = await asyncio.wait(pending, timeout=330)
        for task in not_done:
            task.cancel()
            samples.append(Sample(start, target.now(), -1, name))  # hung: counted, never hidden
    return samples


def summarize(samples: list[Sample], deadline_ms: float | None) -> dict[str, Any]:
    codes = [s.status for s in samples]
    ok = [s for s in samples if s.status == 200]
    refused = [s for s in samples if s.status in (429, 503)]
    wall = (max(s.done for s in samples) - min(s.sent for s in samples)) if samples else 0.0
    out: dict[str, Any] = {
        "requests": len(samples),
        "ok": len(ok),
        "refused_429": codes.count(429),
        "refused_503": codes.count(503),
        "deadline_504": codes.count(504),
        "errors_5xx_other": sum(c >= 500 and c not in (503, 504) for c in codes),
        "transport_errors_or_hung": codes.count(-1),
        "refused_share": round(len(refused) / len(samples), 4) if samples else 0.0,
        "wall_s": round(wall, 2),
        "answered_notes_per_s": round(sum(s.notes for s in ok) / wall, 3) if wall else 0.0,
        "ok_p50_ms": pct([s.ms for s in ok], 50),
        "ok_p95_ms": pct([s.ms for s in ok], 95),
        "ok_p99_ms": pct([s.ms for s in ok], 99),
        "ok_max_ms": round(max(s.ms for s in ok), 1) if ok else None,
        "refusal_p50_ms": pct([s.ms for s in refused], 50),
        "refusal_max_ms": round(max(s.ms for s in refused), 1) if refused else None,
        "max_ms": round(max(s.ms for s in samples), 1) if samples else None,
    }
    if deadline_ms:
        out["deadline_ms"] = deadline_ms
        out["answered_within_deadline_plus_500ms"] = round(
            sum(s.ms <= deadline_ms + 500 for s in samples) / max(len(samples), 1), 4
        )
        out["ok_within_deadline"] = round(sum(s.ms <= deadline_ms for s in ok) / max(len(ok), 1), 4)
        out["refusals_within_500ms"] = round(sum(s.ms <= 500 for s in refused) / max(len(refused), 1), 4)
    return out


class ReplicaPoller:
    """Replica counts per deployment and node every `interval` s, in a thread (needs Ray)."""

    def __init__(self, target: Target, interval: float = 2.0):
        self.target, self.interval = target, interval
        self.log: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ReplicaPoller:
        self._thread.start()
        return self

    def _run(self) -> None:
        from serve_app.replicas import serve_replicas

        while not self._stop.is_set():
            try:
                reps = serve_replicas(APP)
                self.log.append({"t": round(self.target.now(), 2), **{k: v.model_dump() for k, v in reps.items()}})
            except Exception as exc:  # keep polling through a controller hiccup
                self.log.append({"t": round(self.target.now(), 2), "error": type(exc).__name__})
            self._stop.wait(self.interval)

    def latest(self) -> dict[str, Any]:
        return next((e for e in reversed(self.log) if "error" not in e), {})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def cooldown(poller: ReplicaPoller | None, seconds: float) -> dict[str, Any]:
    """Wait (no load) until every deployment is at its minimum; how long it took."""
    if poller is None:
        time.sleep(min(seconds, 5))
        return {"skipped": "no Ray address: replica counts unknown"}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        time.sleep(2)
        latest = poller.latest()
        deps = {k: v for k, v in latest.items() if isinstance(v, dict)}
        if deps and all(v["running"] <= v["min_replicas"] and not v["starting"] for v in deps.values()):
            return {"back_to_min_s": round(time.perf_counter() - t0, 1), "replicas": deps}
    return {"back_to_min_s": None, "timeout_s": seconds, "replicas": poller.latest()}


def timeline(samples: list[Sample], replicas: list[dict[str, Any]], bucket_s: float = 5.0) -> list[dict[str, Any]]:
    """Per bucket of answer time: answered/s, refused/s, latency percentiles (answers; refusals'
    p99 and how many took over 0.5 s), replicas then."""
    if not samples:
        return []
    end = max(s.done for s in samples)
    rows = []
    for k in range(int(end // bucket_s) + 1):
        lo, hi = k * bucket_s, (k + 1) * bucket_s
        here = [s for s in samples if lo <= s.done < hi]
        ok = [s.ms for s in here if s.status == 200]
        refused = [s.ms for s in here if s.status in (429, 503)]
        rep = [r for r in replicas if lo <= r["t"] < hi and "FastTier" in r]
        rows.append(
            {
                "t": hi,
                "ok_per_s": round(len(ok) / bucket_s, 2),
                "refused_per_s": round(sum(s.status in (429, 503) for s in here) / bucket_s, 2),
                "errors_per_s": round(sum(s.status not in (200, 429, 503) for s in here) / bucket_s, 2),
                "p50_ms": pct(ok, 50),
                "p95_ms": pct(ok, 95),
                "p99_ms": pct(ok, 99),
                "refusal_p99_ms": pct(refused, 99),
                "refusals_over_500ms": sum(ms > 500 for ms in refused),
                "fast_replicas": max((r["FastTier"]["running"] for r in rep), default=None),
                "fast_nodes": max((len(r["FastTier"]["per_node"]) for r in rep), default=None),
            }
        )
    return rows


def at_full_capacity(
    samples: list[Sample], replicas: list[dict[str, Any]], deployment: str = "FastTier", bucket_s: float = 5.0
) -> dict[str, Any] | None:
    """Answered notes/s over the stretch of a scenario in which `deployment` ran at its
    max_replicas: whole `bucket_s` buckets, the scenario's first and last left out (clients
    starting and draining), kept only where every replica poll inside saw all replicas running.

    A closed-loop scenario that starts from the minimum spends its first 15-20 s scaling up; its
    whole-scenario rate mixes one replica's throughput with two. This is the served throughput at
    saturation: all the capacity the config allows, running and busy. None when no bucket
    qualifies (the deployment never reached its maximum, or no replica counts)."""
    if not samples or not replicas:
        return None
    start, end = min(s.sent for s in samples), max(s.done for s in samples)
    kept, notes = 0, 0
    for k in range(1, int((end - start) // bucket_s) - 1):
        lo, hi = start + k * bucket_s, start + (k + 1) * bucket_s
        polls = [r[deployment] for r in replicas if lo <= r["t"] < hi and deployment in r]
        if not polls or any(p["running"] < p["max_replicas"] for p in polls):
            continue
        kept += 1
        notes += sum(s.notes for s in samples if s.status == 200 and lo <= s.done < hi)
    if not kept:
        return None
    return {"notes_per_s": round(notes / (kept * bucket_s), 3), "seconds": kept * bucket_s}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["timeline"]
    t = [r["t"] for r in rows]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    a.plot(t, [r["ok_per_s"] for r in rows], label="answered/s", color="#2ca02c")
    a.plot(t, [r["refused_per_s"] for r in rows], label="refused/s (429/503)", color="#ff7f0e")
    a.plot(t, [r["errors_per_s"] for r in rows], label="other/s (504, errors)", color="#d62728")
    a.set_ylabel("requests / s")
    a.legend(loc="upper right", fontsize=8)
    for q, col in (("p50_ms", "#1f77b4"), ("p95_ms", "#9467bd"), ("p99_ms", "#8c564b")):
        b.plot(t, [r[q] if r[q] is not None else np.nan for r in rows], label=q.replace("_ms", ""), color=col)
    b.set_ylabel("latency of answered (ms)")
    b.set_yscale("log")
    b.legend(loc="upper right", fontsize=8)
    rt = [e["t"] for e in report["replicas"] if "FastTier" in e]
    for dep, col in (("FastTier", "#1f77b4"), ("Ingress", "#7f7f7f"), ("LLMTier", "#e377c2")):
        ys = [e[dep]["running"] if dep in e else np.nan for e in report["replicas"] if "FastTier" in e]
        if any(not np.isnan(y) for y in ys):
            c.step(rt, ys, where="post", label=f"{dep} running", color=col)
    c.set_ylabel("replicas")
    c.set_xlabel("seconds since start")
    c.legend(loc="upper right", fontsize=8)
    for sc in report["scenarios"]:
        for ax in (a, b, c):
            ax.axvline(sc["started_s"], color="#bbb", lw=0.8)
        a.text(sc["started_s"], a.get_ylim()[1] * 0.92, sc["name"], fontsize=7, color="#555")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def in_process_baseline(notes: list[dict[str, str]], model_dir: Path, passes: int = 3) -> dict[str, Any]:
    """`Pipeline.run(notes, fast-only)` as `clinie extract` runs it: the throughput to match.

    The median of `passes` passes: one pass is a few seconds, and on this project's machine one
    baseline pass read 7.35 notes/s where the other passes that hour read 12.7-15.4."""
    from serve_app.pipeline import Pipeline

    pipe = Pipeline(model_dir=model_dir)
    inputs = [NoteInput(note_id=n["note_id"], text=n["text"]) for n in notes]
    pipe.run(inputs[:3], policy="fast-only")  # warm-up
    walls = []
    for _ in range(passes):
        t0 = time.perf_counter()
        pipe.run(inputs, policy="fast-only")
        walls.append(time.perf_counter() - t0)
    wall = float(np.median(walls))
    return {
        "wall_s": round(wall, 2),
        "notes_per_s": round(len(notes) / wall, 3),
        "passes_notes_per_s": [round(len(notes) / w, 3) for w in walls],
    }


def measure_baselines(notes: list[dict[str, str]], model_dir: Path, when: str) -> dict[str, Any]:
    """Both baselines (`in_process`, `one_engine_per_core`) with the machine to themselves."""
    got = {
        "in_process": in_process_baseline(notes, model_dir),
        "one_engine_per_core": one_engine_per_core(notes, model_dir),
    }
    per_core = got["one_engine_per_core"]
    print(
        f"{when}: in process {got['in_process']['notes_per_s']:.2f} notes/s, "
        f"one engine per core ({per_core['processes']}) {per_core['notes_per_s']:.2f}",
        flush=True,
    )
    return got


def combine_baselines(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each baseline as the mean of its runs (before and after the scenarios), every run kept.

    Measured once before minutes of load, a baseline is one moment of a machine whose speed drifts:
    on this project's machine kind the same in-process run gave 10.7 and 12.3 notes/s half an hour
    apart. Measuring it on both sides of the scenarios and setting the served throughput against the
    mean makes a drift in either direction count against both alike; `runs` shows the spread."""
    out: dict[str, Any] = {}
    for name in ("in_process", "one_engine_per_core"):
        each = [r[name] for r in runs]
        out[name] = {
            **{k: v for k, v in each[0].items() if k in ("processes", "threads_each")},
            "notes_per_s": round(float(np.mean([e["notes_per_s"] for e in each])), 3),
            "runs_notes_per_s": [e["notes_per_s"] for e in each],
            "runs": each,
        }
    return out


def _per_core_worker(model_dir: str, notes: list[dict[str, str]], barrier: Any, out: Any) -> None:
    from serve_app.pipeline import Pipeline

    pipe = Pipeline(model_dir=model_dir, threads=1)
    inputs = [NoteInput(note_id=n["note_id"], text=n["text"]) for n in notes]
    pipe.run(inputs[:3], policy="fast-only")  # warm-up
    barrier.wait(timeout=300)  # every process warm before any starts the clock
    t0 = time.perf_counter()
    pipe.run(inputs, policy="fast-only")
    out.put(time.perf_counter() - t0)


def one_engine_per_core(notes: list[dict[str, str]], model_dir: Path, processes: int | None = None) -> dict[str, Any]:
    """One single-threaded pipeline per core, each in its own process over all the notes, started
    together: how a replica per core would answer with nothing else on the machine (no proxy, no
    Ingress, no Ray), the ceiling the served throughput is set against beside `in_process`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = processes or cores
    ctx = mp.get_context("spawn")  # no inherited ONNX Runtime or thread state
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_per_core_worker, args=(str(model_dir), notes, barrier, out)) for _ in range(n)]
    for proc in procs:
        proc.start()
    walls: list[float] = []
    deadline = time.monotonic() + 900
    try:
        while len(walls) < n:
            try:
                walls.append(out.get(timeout=1.0))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    why = f"exit codes {failed}" if failed else "no answer in 900 s"
                    raise RuntimeError(f"one-engine-per-core baseline: a worker failed ({why})") from None
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    wall = max(walls)
    return {"processes": n, "threads_each": 1, "wall_s": round(wall, 3), "notes_per_s": round(n * len(notes) / wall, 3)}


def ingress_refusals(url: str | None) -> float | None:
    """The 429s the Ingress itself answered over HTTP so far (its /metrics), or None when it cannot
    be read. Each Ingress replica counts its own: exact with one replica (the local config), one
    replica's count otherwise. Set against the 429s the clients got, it says how many Ray's proxy
    answered from shed hints (serve_app/shedding.py)."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("clinie_requests_total{") and 'api="http"' in line and 'status="429"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_scenarios(
    target: Target, notes: list[dict[str, str]], scenarios: list[str], poller: ReplicaPoller | None
) -> tuple[list[dict[str, Any]], list[Sample]]:
    results, samples = [], []
    meter = CpuMeter()
    for spec in scenarios:
        kind, *rest = spec.split(":")
        started = target.now()
        # a batch scenario's third field is its notes a request, the deadline comes after it
        at = 3 if kind == "batch" else 2
        deadline = float(rest[at]) if len(rest) > at else None
        if kind == "cooldown":
            out: dict[str, Any] = cooldown(poller, float(rest[0]))
        elif kind == "idle":  # no requests: what the service costs while it waits for them
            cpu_before = meter.snapshot()
            time.sleep(float(rest[0]))
            out = {"cpu_cores": meter.cores(cpu_before, meter.snapshot())}
        else:
            cpu_before = meter.snapshot()
            ingress_before = ingress_refusals(target.url) if kind != "grpc" else None
            if kind in ("closed", "grpc", "batch"):
                size = int(rest[2]) if kind == "batch" else 0
                got = asyncio.run(closed_loop(target, notes, [int(rest[0])], float(rest[1]), deadline, kind, size))
            elif kind == "step":
                steps = [int(c) for c in rest[0].split(",")]
                got = asyncio.run(closed_loop(target, notes, steps, float(rest[1]), None, "step"))
            elif kind == "open":
                got = asyncio.run(open_loop(target, notes, float(rest[0]), float(rest[1]), deadline))
            else:
                raise SystemExit(f"unknown scenario kind {kind!r} in {spec!r}")
            samples += got
            out = summarize(got, deadline)
            out["cpu_cores"] = meter.cores(cpu_before, meter.snapshot())
            ingress_after = ingress_refusals(target.url) if ingress_before is not None else None
            if ingress_before is not None and ingress_after is not None:
                by_ingress = int(ingress_after - ingress_before)
                out["refused_429_by_ingress"] = by_ingress
                out["refused_429_at_front_door"] = max(0, out["refused_429"] - by_ingress)
            if poller is not None:
                fast = [e["FastTier"]["running"] for e in poller.log if "FastTier" in e and e["t"] >= started]
                out["fast_tier_max_replicas_seen"] = max(fast, default=None)
                out["at_full_capacity"] = at_full_capacity(got, poller.log)
        results.append({"name": spec, "started_s": round(started, 1), "ended_s": round(target.now(), 1), **out})
        print(json.dumps(results[-1]), flush=True)
    return results, samples


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="HTTP base URL of a running deployment (default: start one locally).")
    p.add_argument("--grpc", dest="grpc_target", help="gRPC target host:port (for grpc scenarios).")
    p.add_argument("--ray-address", help="Ray address to poll replica counts from (`auto`: the local cluster).")
    p.add_argument(
        "--scenario", action="append", help=f"Scenario (repeatable); default: {' '.join(DEFAULT_SCENARIOS)}."
    )
    p.add_argument("--notes", type=int, default=60, help="Unlabelled notes to cycle through (bounded).")
    p.add_argument("--policy", default="fast-only", help="Policy every request names.")
    p.add_argument("--honour-retry-after", action="store_true", help="Refused clients wait Retry-After first.")
    p.add_argument(
        "--client",
        choices=("raw", "clinie"),
        default="raw",
        help="What times the HTTP requests: benchmarks/raw_http.py (default) or clinie.client.",
    )
    p.add_argument("--model", help="Fast-tier model directory for a local start (default: the embedded default).")
    p.add_argument("--llm", action="store_true", help="Deploy the LLM tier too on a local start.")
    front_door.add_option(
        p, help="What listens on the ports of a local start (serve_app/front_door.py; default: Ray Serve's proxy)."
    )
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--grpc-port", type=int, default=19400)
    p.add_argument("--output-dir", default="benchmarks/results")
    args = p.parse_args(argv)

    notes = load_notes(UNLABELED, args.notes)
    report: dict[str, Any] = {
        "notes": len(notes),
        "chars": sum(len(n["text"]) for n in notes),
        "policy": args.policy,
        "http_client": args.client,  # what timed the HTTP requests (--client)
        "cpu": cpu_info(),
    }
    scenarios = args.scenario or DEFAULT_SCENARIOS
    local_app = args.url is None
    baselines: list[dict[str, Any]] = []  # a local start's, before and after the scenarios
    model_dir: Path | None = None
    if local_app:
        from deployments.fast_tier.default import resolve_model_dir
        from serve_app import local

        model_dir = resolve_model_dir(args.model)
        baselines.append(measure_baselines(notes, model_dir, "before"))
        cfg, raw = local.local_app_config(fast_tier_model=str(model_dir), llm_enabled=args.llm)
        svc = local.start(cfg, raw, port=args.port, grpc_port=args.grpc_port, door=FrontDoor(args.front_door))
        report["front_door"] = args.front_door
        report["start_to_ready_s"] = round(svc.started_s + local.wait_ready(svc.http_url), 2)
        args.url, args.grpc_target = svc.http_url, args.grpc_target or svc.grpc_target
    elif args.ray_address:
        import ray

        ray.init(address=args.ray_address, namespace="serve", log_to_driver=False)
    target = Target(args.url, args.grpc_target, args.policy, args.honour_retry_after, raw=args.client == "raw")
    poller = ReplicaPoller(target).start() if (local_app or args.ray_address) else None
    try:
        report["scenarios"], samples = run_scenarios(target, notes, scenarios, poller)
    finally:
        if poller is not None:
            poller.stop()
        if local_app:
            local.stop()
    if model_dir is not None:  # the service stopped: the baselines have the machine again
        baselines.append(measure_baselines(notes, model_dir, "after"))
        report.update(combine_baselines(baselines))
    report["replicas"] = poller.log if poller is not None else []
    report["timeline"] = timeline(samples, report["replicas"])
    if "in_process" in report:
        base = report["in_process"]["notes_per_s"]
        best = max((s.get("answered_notes_per_s", 0.0) for s in report["scenarios"]), default=0.0)
        report["served_over_in_process_best_scenario"] = round(best / base, 3)
        # per scenario, at the FastTier's maximum replicas (at_full_capacity): the saturation figure
        report["served_over_in_process_at_saturation"] = {
            s["name"]: round(s["at_full_capacity"]["notes_per_s"] / base, 3)
            for s in report["scenarios"]
            if s.get("at_full_capacity")
        }
    if "one_engine_per_core" in report:
        ceiling = report["one_engine_per_core"]["notes_per_s"]
        report["served_over_one_engine_per_core_at_saturation"] = {
            s["name"]: round(s["at_full_capacity"]["notes_per_s"] / ceiling, 3)
            for s in report["scenarios"]
            if s.get("at_full_capacity")
        }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out / "load.json")
    plot(report, out / "load.png")
    print(f"wrote {out / 'load.json'} and {out / 'load.png'}")
    return report


if __name__ == "__main__":
    main()
