"""Faults under load: kill a part of the running application while clients send real notes.

For each fault, in turn: wait until the application is ready (the LLM tier too), start 4
closed-loop HTTP clients (two `fast-only`, two `llm-only`, real unlabelled notes, `deadline_ms`
20,000), inject the fault 5 s in, keep sending for 20 s more, then count every answer and measure
the time from the fault until `/readyz?strict=true` answers 200 again. Faults:
- `fast_replica`: Ray's actor kill of one FastTier replica;
- `llm_replica`: Ray's actor kill of the LLMTier replica;
- `llm_engine`: SIGKILL to the LLM engine's own process (a child of the LLMTier replica);
- `ingress_replica`: Ray's actor kill of the Ingress replica.
Every answer is classed: a result (by tier and `route.reason`; marked when Ray's proxy sent it again
after losing its Ingress replica), a refusal with `Retry-After`
(429/503), an explicit 504, a 500, anything else, no answer, or an answer later than its deadline
plus 2 s. The target is no 500, nothing unanswered and nothing late.

Clients send plain HTTP (urllib: what the service itself answers, one attempt a request), or with
`--retries N` through `clinie.client` with N retries (what a caller using the project's client
sees: it sends again on 429/503, a refused connection, and a 500 the service did not write).

    python -m benchmarks.faults          # local app on the embedded defaults, LLM tier included
    python -m benchmarks.faults --fault ingress_replica --retries 2
    python -m benchmarks.faults --fault ingress_replica --front-door haproxy   # HAProxy on the ports

Writes `faults.json` under `--output-dir` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from benchmarks.load import UNLABELED, load_notes
from benchmarks.processes import ray_process_group
from benchmarks.report import write_report
from serve_app import front_door, local
from serve_app.front_door import FrontDoor

DEADLINE_MS = 20_000
FAULTS = ["fast_replica", "llm_replica", "llm_engine", "ingress_replica"]


def _post(url: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, str]]:
    req = urllib.request.Request(
        url + "/v1/extract", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE_MS / 1000 + 30) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        try:
            payload = json.loads(e.read() or b"{}")
        except ValueError:
            payload = {}
        return e.code, payload, dict(e.headers)
    except (OSError, ValueError) as exc:
        return "no answer", {"error": type(exc).__name__}, {}


def _client_post(client: Any, body: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """The same request through clinie.client (its retries on); a ClinieError is classed by status."""
    from clinie.client import ClinieError

    try:
        return 200, client.extract(body["text"], policy=body["policy"], deadline_ms=body["deadline_ms"]), {}
    except ClinieError as err:
        headers = {"retry-after": str(err.retry_after)} if err.retry_after is not None else {}
        status = "no answer" if err.code in ("unreachable", "timeout") else err.status
        return status, {"error": {"code": err.code}}, headers


def _classify(status: Any, body: dict[str, Any], headers: dict[str, str], seconds: float) -> str:
    if seconds > DEADLINE_MS / 1000 + 2:
        return "late"
    if status == 200:
        again = any(k.lower() == "x-clinie-proxy-retried" for k in headers)  # serve_app/proxy_retry.py
        label = f"200 {body['route']['tier']} {body['route']['reason']}"
        return label + " (sent again by the proxy)" if again else label
    if status in (429, 503):
        has = any(k.lower() == "retry-after" for k in headers)
        return f"{status} retry-after" if has else f"{status} without Retry-After"
    if status == 504:
        return "504 deadline_exceeded"
    return str(status)


def _ready(url: str, strict: bool = True) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz" + ("?strict=true" if strict else ""), timeout=5) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


class ReadyWatch:
    """From the fault on: when `/readyz?strict=true` first failed, and when it answered 200 again."""

    def __init__(self, url: str):
        self.url, self.t0 = url, time.perf_counter()
        self.failed_at: float | None = None
        self.back_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and time.perf_counter() - self.t0 < 300:
            ok, now = _ready(self.url), time.perf_counter() - self.t0
            if not ok and self.failed_at is None:
                self.failed_at = now
            if ok and self.failed_at is not None:
                self.back_at = now
                return
            self._stop.wait(0.5)

    def result(self) -> tuple[float | None, float | None]:
        """(seconds until it failed, seconds until it was back); (None, 0.0): it never failed."""
        self._thread.join(timeout=2.0)  # readiness was just seen: the watch's next poll sees it too
        self._stop.set()
        self._thread.join()
        return (
            (None, 0.0)
            if self.failed_at is None
            else (round(self.failed_at, 1), self.back_at and round(self.back_at, 1))
        )


def _processes(group: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if ray_process_group(p) == f"ServeReplica:clinie:{group}"]


def inject(fault: str) -> str:
    """Do the fault; say what was hit."""
    import ray

    if fault == "llm_engine":
        (replica,) = _processes("LLMTier")
        children = replica.children(recursive=True)
        if not children:
            return "no engine child process found"
        victim = max(children, key=lambda p: p.memory_info().rss)  # the engine core holds the model
        os.kill(victim.pid, signal.SIGKILL)
        return f"SIGKILL to pid {victim.pid} ({victim.name()})"
    deployment = {"fast_replica": "FastTier", "llm_replica": "LLMTier", "ingress_replica": "Ingress"}[fault]
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if deployment in a["name"]]
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=False)
    return f"ray.kill {actors[0]['name']}"


def run_fault(url: str, notes: list[dict[str, str]], fault: str, retries: int = 0) -> dict[str, Any]:
    from clinie.client import Client

    before = local.wait_ready(url, timeout_s=300, strict=True)
    answers: Counter[str] = Counter()
    retried: list[int] = []
    lock = threading.Lock()
    t_start = time.perf_counter()
    stop = t_start + 25

    def client(i: int) -> None:
        k = i
        api = Client(url, timeout=DEADLINE_MS / 1000 + 30, retries=retries, backoff=0.5) if retries else None
        while time.perf_counter() < stop:
            note = notes[k % len(notes)]
            k += 4
            body = {"text": note["text"], "policy": "fast-only" if i < 2 else "llm-only", "deadline_ms": DEADLINE_MS}
            t0 = time.perf_counter()
            status, payload, headers = _client_post(api, body) if api else _post(url, body)
            label = _classify(status, payload, headers, time.perf_counter() - t0)
            with lock:
                answers[label] += 1
        if api is not None:
            with lock:
                retried.append(api.retried)
            api.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(5)
    hit = inject(fault)
    watch = ReadyWatch(url)
    for t in threads:
        t.join()
    if watch.failed_at is not None:
        with contextlib.suppress(TimeoutError):  # let the watch see it back (or give up after 300 s)
            local.wait_ready(url, timeout_s=300, strict=True)
    failed_at, back = watch.result()
    return {
        "fault": fault,
        "hit": hit,
        "ready_before_s": before,
        "unready_after_s": failed_at,
        "back_to_ready_s": back,
        "client_retries": retries,
        "retried": sum(retried),
        "answers": dict(sorted(answers.items())),
        "bad": sum(v for k, v in answers.items() if not (k.startswith(("200", "429 retry", "503 retry", "504")))),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| fault | answers | 500 / unanswered / late | back to ready |", "| --- | --- | --- | --- |"]
    for r in rows:
        answers = ", ".join(f"{v} × {k}" for k, v in r["answers"].items())
        back = "never left" if r["unready_after_s"] is None else f"{r['back_to_ready_s']} s after the fault"
        lines.append(f"| `{r['fault']}` | {answers} | {r['bad']} | {back} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fault", action="append", choices=FAULTS, help="Fault to inject (repeatable; default all).")
    p.add_argument("--retries", type=int, default=0, help="Send through clinie.client with N retries (0: urllib).")
    front_door.add_option(
        p, help="What listens on the service's ports (serve_app/front_door.py; default: Ray Serve's proxy)."
    )
    p.add_argument("--port", type=int, default=18600)
    p.add_argument("--output-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    notes = load_notes(UNLABELED, 40, max_chars=4000)
    cfg, raw = local.local_app_config()
    door = FrontDoor(args.front_door)
    svc = local.start(local.prepare_models(cfg), raw, port=args.port, grpc_port=args.port + 1000, door=door)
    rows = []
    try:
        for fault in args.fault or FAULTS:
            rows.append(run_fault(svc.http_url, notes, fault, args.retries))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        local.stop()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_report({"front_door": door.value, "faults": rows}, out / "faults.json")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
