"""Soak: a long run at a steady share of measured capacity, watching memory and latency per minute.

1. Capacity: 8 closed-loop clients for `--measure` seconds (fast-only, real unlabelled notes);
   capacity = their answered notes/s.
2. Soak: Poisson arrivals at `--share` (default 0.7) of that capacity for `--minutes` (default 20).
   Every 10 s the resident memory (RSS) of every Ray process on this machine is sampled, grouped
   by what it is (ServeReplica:clinie:FastTier, ...:Ingress, ProxyActor, ServeController, raylet,
   gcs_server, ...); every minute, latency percentiles of the requests answered in it.
3. Report: memory growth after warm-up (the first `--warmup` minutes) per process group and in
   total (target <= 5%), and p99 of the last 5 minutes against the first 5 after warm-up (target
   within 20%). Replicas the autoscaler starts or stops move the total; the per-group numbers of
   groups that live the whole run are the ones to read for a leak.

    python -m benchmarks.soak                    # local app on the embedded default, 20 minutes
    python -m benchmarks.soak --minutes 5        # a shorter look

Writes `soak.json` and `soak.png` (RSS per group and p50/p99 per minute) under `--output-dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.load import UNLABELED, Sample, Target, closed_loop, load_notes, open_loop, pct
from benchmarks.processes import ray_process_group
from benchmarks.report import write_report


class MemorySampler:
    """RSS (MiB) of every Ray process, grouped, every `interval_s` seconds, on a thread."""

    def __init__(self, t0: float, interval_s: float = 10.0):
        self.t0, self.interval_s = t0, interval_s
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, float]:
        groups: dict[str, float] = {}
        for proc in psutil.process_iter():
            group = ray_process_group(proc)
            if group is None:
                continue
            try:
                groups[group] = groups.get(group, 0.0) + proc.memory_info().rss / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return groups

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rows.append({"t": round(time.perf_counter() - self.t0, 1), "rss_mib": self.sample()})
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def per_minute(samples: list[Sample], start: float, seconds: float) -> list[dict[str, Any]]:
    """Whole minutes of the soak only: the stragglers answered after its end would make a last
    'minute' of a handful of requests."""
    out = []
    for m in range(int(seconds // 60)):
        lo, hi = start + 60 * m, start + 60 * (m + 1)
        inside = [s for s in samples if lo <= s.done < hi]
        ok = [s.ms for s in inside if s.status == 200]
        out.append(
            {
                "minute": m + 1,
                "answered": len(ok),
                "refused_or_failed": len(inside) - len(ok),
                "p50_ms": pct(ok, 50),
                "p95_ms": pct(ok, 95),
                "p99_ms": pct(ok, 99),
            }
        )
    return out


def growth(rows: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """RSS of the first and last minute after warm-up, per group present in both, and in total."""
    after = [r for r in rows if r["t"] >= warmup_s]
    if len(after) < 12:
        return {}
    first, last = after[:6], after[-6:]

    def mean(window: list[dict[str, Any]], group: str | None) -> float:
        vals = [sum(r["rss_mib"].values()) if group is None else r["rss_mib"].get(group, np.nan) for r in window]
        return float(np.nanmean(vals))

    groups = sorted(set(first[0]["rss_mib"]) & set(last[-1]["rss_mib"]))
    out: dict[str, Any] = {}
    for g in [*groups, None]:
        a, b = mean(first, g), mean(last, g)
        out[g or "total"] = {"first_mib": round(a, 1), "last_mib": round(b, 1), "growth": round(b / a - 1, 4)}
    return out


def latency_drift(minutes: list[dict[str, Any]], warmup_min: int) -> dict[str, Any]:
    rows = [m for m in minutes if m["minute"] > warmup_min and m["p99_ms"] is not None]
    if len(rows) < 10:
        return {}
    first, last = rows[:5], rows[-5:]
    a = float(np.mean([m["p99_ms"] for m in first]))
    b = float(np.mean([m["p99_ms"] for m in last]))
    return {"first5_p99_ms": round(a, 1), "last5_p99_ms": round(b, 1), "change": round(b / a - 1, 4)}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=False)
    rows = report["memory"]
    groups = sorted({g for r in rows for g in r["rss_mib"]})
    for g in groups:
        ax1.plot([r["t"] / 60 for r in rows], [r["rss_mib"].get(g, np.nan) for r in rows], label=g)
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_xlabel("minutes")
    ax1.legend(fontsize=7, ncol=3)
    ax1.set_title(f"soak at {report['share']:.0%} of {report['capacity_notes_per_s']:.2f} notes/s")
    mins = report["minutes"]
    for key in ("p50_ms", "p99_ms"):
        ax2.plot([m["minute"] for m in mins], [m[key] for m in mins], marker="o", label=key)
    ax2.set_ylabel("latency (ms)")
    ax2.set_xlabel("minute of the soak")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def soak(target: Target, notes: list[dict[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    measured = asyncio.run(closed_loop(target, notes, [8], args.measure, None, "http"))
    ok = [s for s in measured if s.status == 200]
    capacity = len(ok) / args.measure
    rate = capacity * args.share
    print(f"capacity {capacity:.2f} notes/s; soaking at {rate:.2f}/s for {args.minutes} min", flush=True)
    start = target.now()
    with MemorySampler(target.t0) as mem:
        samples = asyncio.run(open_loop(target, notes, rate, args.minutes * 60, None))
    minutes = per_minute(samples, start, args.minutes * 60)
    rows = [{**r, "t": r["t"] - start} for r in mem.rows if r["t"] >= start]
    return {
        "capacity_notes_per_s": round(capacity, 3),
        "share": args.share,
        "rate": round(rate, 3),
        "soak_minutes": args.minutes,
        "warmup_minutes": args.warmup,
        "requests": len(samples),
        "not_answered": sum(s.status != 200 for s in samples),
        "minutes": minutes,
        "memory_growth_after_warmup": growth(rows, args.warmup * 60),
        "p99_drift": latency_drift(minutes, args.warmup),
        "memory": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="HTTP base URL of a running deployment on this machine (default: start one).")
    p.add_argument("--minutes", type=float, default=20.0, help="Soak length (default 20).")
    p.add_argument("--warmup", type=int, default=3, help="Minutes not counted for growth (default 3).")
    p.add_argument("--share", type=float, default=0.7, help="Share of measured capacity (default 0.7).")
    p.add_argument("--measure", type=float, default=45.0, help="Seconds of the capacity measurement.")
    p.add_argument("--notes", type=int, default=60, help="Unlabelled notes to cycle through.")
    p.add_argument("--port", type=int, default=18500)
    p.add_argument("--output-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    notes = load_notes(UNLABELED, args.notes)
    url = args.url
    if url is None:
        from serve_app import local

        cfg, raw = local.local_app_config(llm_enabled=False)
        svc = local.start(local.prepare_models(cfg), raw, port=args.port, grpc_port=args.port + 1000)
        local.wait_ready(svc.http_url, timeout_s=300)
        url = svc.http_url
    try:
        report = soak(Target(url, None, "fast-only", honour_retry_after=True), notes, args)
    finally:
        if args.url is None:
            local.stop()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out / "soak.json")
    plot(report, out / "soak.png")
    print({k: report[k] for k in ("capacity_notes_per_s", "rate", "requests", "not_answered", "p99_drift")})
    print(report["memory_growth_after_warmup"])
    return report


if __name__ == "__main__":
    main()
