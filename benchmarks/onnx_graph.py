"""ONNX graphs alone, side by side: milliseconds a run at a few input shapes, and where a run goes.

For comparing exports of the same encoder (e.g. the tagger exported with eager attention against
one exported from PyTorch's SDPA, `benchmarks.fast_tier --compare` measures whole extraction).
Random word-piece ids, the last row of a batch half padded. Runs interleave: each round times
every graph in turn at one shape and the median round is kept, so a machine whose speed drifts
during the run slows every graph alike. `--profile` adds ONNX Runtime's own profile of each graph
at the first shape: the share of kernel time per operator type.

    python -m benchmarks.onnx_graph MODEL_A/tagger.int8.onnx MODEL_B/tagger.int8.onnx [--profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def session(path: str, threads: int, profile_dir: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(profile_dir) / Path(path).parent.name)
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def inputs(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1000, 20000, size=(batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[-1, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def timings(paths: list[str], shapes: list[tuple[int, int]], rounds: int, threads: int) -> dict[str, Any]:
    sessions = {p: session(p, threads) for p in paths}
    out: dict[str, Any] = {}
    for batch, length in shapes:
        feed = inputs(batch, length)
        for s in sessions.values():
            s.run(None, feed)  # warm-up
        ms: dict[str, list[float]] = {p: [] for p in paths}
        for _ in range(rounds):
            for p, s in sessions.items():
                t0 = time.perf_counter()
                for _ in range(10):
                    s.run(None, feed)
                ms[p].append((time.perf_counter() - t0) * 100)
        out[f"{batch}x{length}"] = {p: round(float(np.median(v)), 2) for p, v in ms.items()}
    return out


def op_shares(path: str, shape: tuple[int, int], threads: int, runs: int = 40) -> dict[str, float]:
    """Share of kernel time per operator type (ONNX Runtime's profiler), over `runs` runs."""
    with tempfile.TemporaryDirectory() as tmp:
        s = session(path, threads, tmp)
        feed = inputs(*shape)
        for _ in range(runs):
            s.run(None, feed)
        events = json.loads(Path(s.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return {op: round(100 * t / total, 1) for op, t in per_op.most_common(12)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graphs", nargs="+", help="ONNX files taking input_ids and attention_mask.")
    p.add_argument("--shapes", default="1x64,1x128,4x128", help="BATCHxLENGTH, comma-separated.")
    p.add_argument("--rounds", type=int, default=7, help="Rounds per shape (10 runs of each graph a round).")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads.")
    p.add_argument("--profile", action="store_true", help="Add each graph's share of time per operator type.")
    args = p.parse_args(argv)
    shapes = [(int(b), int(n)) for b, n in (s.split("x") for s in args.shapes.split(","))]
    report: dict[str, Any] = {"ms_per_run": timings(args.graphs, shapes, args.rounds, args.threads)}
    for shape, row in report["ms_per_run"].items():
        print(f"{shape:>8}: " + "  ".join(f"{g} {ms:.2f} ms" for g, ms in row.items()))
    if args.profile:
        report["op_share_percent"] = {g: op_shares(g, shapes[0], args.threads) for g in args.graphs}
        for g, shares in report["op_share_percent"].items():
            print(f"{g} at {args.shapes.split(',')[0]}: " + ", ".join(f"{op} {v}%" for op, v in shares.items()))
    return report


if __name__ == "__main__":
    main()
