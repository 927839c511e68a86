"""The load benchmark's saturation figure: answered notes/s while FastTier ran at its maximum."""

from __future__ import annotations

import pytest

from benchmarks.load import Sample, at_full_capacity


def _poll(t: float, running: int) -> dict:
    return {"t": t, "FastTier": {"running": running, "starting": 0, "max_replicas": 2, "min_replicas": 1}}


def _samples(rate_before: int, rate_after: int, switch: float, seconds: int) -> list[Sample]:
    """`rate_before` answers a second until `switch`, `rate_after` from then on, plus refusals."""
    out = []
    for sec in range(seconds):
        rate = rate_before if sec < switch else rate_after
        out += [Sample(sent=sec + i / rate - 0.05, done=sec + i / rate, status=200, scenario="s") for i in range(rate)]
        out.append(Sample(sent=sec + 0.5, done=sec + 0.6, status=429, scenario="s", notes=0))
    return out


def test_only_buckets_at_max_replicas_count_and_refusals_do_not():
    samples = _samples(10, 20, switch=20, seconds=60)  # one replica for 20 s, then two
    polls = [_poll(t, 1 if t < 20 else 2) for t in range(0, 60, 2)]
    got = at_full_capacity(samples, polls)
    assert got is not None
    # the one-replica stretch (10/s) left out (bucket edges fall 50 ms off the second marks)
    assert got["notes_per_s"] == pytest.approx(20.0, abs=0.1)
    # buckets 20-25 ... 50-55 (the first and last bucket of the scenario never count)
    assert got["seconds"] == 35.0


def test_none_without_a_bucket_at_max_or_without_polls():
    samples = _samples(10, 10, switch=0, seconds=30)
    assert at_full_capacity(samples, [_poll(t, 1) for t in range(0, 30, 2)]) is None
    assert at_full_capacity(samples, []) is None
    assert at_full_capacity([], [_poll(0, 2)]) is None


def test_a_bucket_with_one_poll_below_max_is_left_out():
    samples = _samples(20, 20, switch=0, seconds=30)
    polls = [_poll(t, 2) for t in range(0, 30, 2)]
    polls[6] = _poll(12, 1)  # a replica lost for a moment in bucket 10-15
    got = at_full_capacity(samples, polls)
    assert got is not None and got["seconds"] == 15.0  # 5-10, 15-20, 20-25 (0-5 and 25-30 are edges)


@pytest.mark.slow
def test_one_engine_per_core_runs_single_threaded_pipelines_side_by_side(tiny_model, train_dir):
    from benchmarks.load import one_engine_per_core
    from serve_app.pipeline import Pipeline

    # the pipeline a worker builds: one ONNX Runtime thread
    assert Pipeline(model_dir=tiny_model, threads=1).fast.cfg.intra_op_threads == 1

    notes = [{"note_id": p.stem, "text": p.read_text()} for p in sorted(train_dir.glob("*.txt"))[:4]]
    got = one_engine_per_core(notes, tiny_model, processes=2)
    assert got["processes"] == 2 and got["threads_each"] == 1
    # both processes answered every note; the rate is the notes of both over the slower one's wall
    assert got["wall_s"] > 0
    assert got["notes_per_s"] == pytest.approx(2 * len(notes) / got["wall_s"], rel=0.05)


@pytest.mark.slow
def test_the_in_process_baseline_is_the_median_pass(tiny_model, train_dir):
    from benchmarks.load import in_process_baseline

    notes = [{"note_id": p.stem, "text": p.read_text()} for p in sorted(train_dir.glob("*.txt"))[:3]]
    got = in_process_baseline(notes, tiny_model, passes=3)
    passes = sorted(got["passes_notes_per_s"])
    assert len(passes) == 3 and got["notes_per_s"] == pytest.approx(passes[1], rel=0.01)


def test_one_engine_per_core_fails_loudly_when_a_worker_dies(tmp_path):
    from benchmarks.load import one_engine_per_core

    # a real failure inside the workers: no model where they are told to look
    with pytest.raises(RuntimeError, match="a worker failed"):
        one_engine_per_core([{"note_id": "a", "text": "Denies chest pain."}], tmp_path / "no-model", processes=2)


def test_baselines_are_the_mean_of_before_and_after_with_each_run_kept():
    from benchmarks.load import combine_baselines

    def run(inp: float, per_core: float) -> dict:
        return {
            "in_process": {"wall_s": 60 / inp, "notes_per_s": inp},
            "one_engine_per_core": {"processes": 2, "threads_each": 1, "notes_per_s": per_core},
        }

    got = combine_baselines([run(10.0, 14.0), run(12.0, 15.0)])
    assert got["in_process"]["notes_per_s"] == 11.0 and got["in_process"]["runs_notes_per_s"] == [10.0, 12.0]
    assert got["one_engine_per_core"]["notes_per_s"] == 14.5 and got["one_engine_per_core"]["processes"] == 2
    # a single run stands alone
    assert combine_baselines([run(10.0, 14.0)])["in_process"]["notes_per_s"] == 10.0


def test_an_idle_scenario_sends_nothing_and_reports_the_cores_busy_meanwhile():
    import threading

    from benchmarks.load import Target, run_scenarios

    # this process keeps a core busy through the scenario: the meter must see it (as `load_client`,
    # the benchmark's own role); roles under 0.005 cores are left out, so an idle machine alone
    # could legitimately report nothing
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        # nothing listens on this port: a request sent would show up as a transport error
        target = Target("http://127.0.0.1:9", None, "fast-only", False)
        results, samples = run_scenarios(target, [], ["idle:0.5"], None)
    finally:
        done.set()
        spinner.join()
    (idle,) = results
    assert samples == [] and idle["name"] == "idle:0.5" and "requests" not in idle
    assert idle["cpu_cores"]["load_client"] >= 0.1


def test_the_timeline_counts_slow_refusals_per_bucket():
    from benchmarks.load import timeline

    samples = [
        Sample(sent=1.0, done=1.2, status=429, scenario="s"),
        Sample(sent=2.0, done=2.7, status=429, scenario="s"),
    ]
    samples += [
        Sample(sent=6.0, done=6.1, status=503, scenario="s"),
        Sample(sent=6.0, done=7.0, status=200, scenario="s"),
    ]
    rows = timeline(samples, [])
    assert [r["refusals_over_500ms"] for r in rows] == [1, 0]
    assert rows[0]["refusal_p99_ms"] > 500 and rows[1]["refusal_p99_ms"] < 500


def test_the_ingress_refusals_are_read_from_its_metrics():
    import http.server
    import threading

    from benchmarks.load import ingress_refusals

    text = (
        b'clinie_requests_total{api="http",endpoint="extract",status="429"} 7.0\n'
        b'clinie_requests_total{api="http",endpoint="extract_batch",status="429"} 2.0\n'
        b'clinie_requests_total{api="grpc",endpoint="Extract",status="429"} 5.0\n'
        b'clinie_requests_total{api="http",endpoint="extract",status="200"} 9.0\n'
    )

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert ingress_refusals(f"http://127.0.0.1:{server.server_port}/") == 9.0  # HTTP 429s only
    finally:
        server.shutdown()
    assert ingress_refusals(f"http://127.0.0.1:{server.server_port}") is None  # gone: unknown, not 0
    assert ingress_refusals(None) is None
