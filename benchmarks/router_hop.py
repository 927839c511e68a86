"""Router in the ingress vs. a Router deployment of its own: what the hop costs, measured.

The same `RouterHost` (signals + policies) routes the same fast-tier analyses of real notes two
ways, in one run:
- in process, as the Ingress now does;
- as a separate Ray Serve deployment called through a DeploymentHandle, as the application did
  before (each call ships the note's NoteAnalysis, with its per-token probabilities and pooled
  embedding, to the router's process and the decision back).
Reports p50/p95 ms per note and the bytes a pickled analysis takes, whole and in the compact form
the FastTier returns (`NoteAnalysis.compact()`), with how many exceed Ray's inline limit for a
reply (above it a reply goes through the object store). Loopback only.

    python -m benchmarks.router_hop [--notes 40] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import UNLABELED, load_notes
from benchmarks.report import write_report


def _pct(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p95_ms": round(float(np.percentile(values, 95)), 3),
        "mean_ms": round(float(np.mean(values)), 3),
    }


# Ray's max_direct_call_object_size default: a task's or actor call's reply up to this size travels
# inline with the reply; a larger one goes through the object store.
INLINE_LIMIT = 100 * 1024


def _kb(sizes: list[int]) -> dict[str, float]:
    return {
        "mean": round(float(np.mean(sizes)) / 1024, 1),
        "max": round(max(sizes) / 1024, 1),
        "over_inline_limit": sum(s > INLINE_LIMIT for s in sizes),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notes", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--model", help="Fast-tier model directory (default: the embedded default).")
    p.add_argument("--output-dir", default="benchmarks/results")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from clinie.ood import OOD_FILE
    from clinie.paths import policies_path
    from deployments.fast_tier.config import EngineConfig
    from deployments.fast_tier.default import resolve_model_dir
    from deployments.fast_tier.engine import FastTierEngine
    from router import LoadState
    from router.host import RouterHost

    model_dir = resolve_model_dir(args.model)
    engine = FastTierEngine(EngineConfig(model_dir=model_dir))
    notes = load_notes(UNLABELED, args.notes)
    analyses = engine.analyze([(n["note_id"], n["text"]) for n in notes])
    ood = str(model_dir / OOD_FILE)
    user_config = {"policies_file": str(policies_path())}
    load = LoadState(llm_available=True)

    host = RouterHost(ood)
    host.reconfigure(user_config)
    local_ms = []
    for _ in range(args.repeat):
        for a in analyses:
            t0 = time.perf_counter()
            host.route(a, "default", load, 30_000.0)
            local_ms.append((time.perf_counter() - t0) * 1000)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        RouterDeployment = serve.deployment(name="Router", ray_actor_options={"num_cpus": 0.1})(RouterHost)
        handle = serve.run(RouterDeployment.options(user_config=user_config).bind(ood), name="hop", route_prefix=None)

        async def remote_times() -> list[float]:
            await handle.route.remote(analyses[0], "default", load, 30_000.0)  # warm-up
            out = []
            for _ in range(args.repeat):
                for a in analyses:
                    t0 = time.perf_counter()
                    await handle.route.remote(a, "default", load, 30_000.0)
                    out.append((time.perf_counter() - t0) * 1000)
            return out

        remote_ms = asyncio.run(remote_times())
    finally:
        serve.shutdown()
        ray.shutdown()

    sizes = [len(pickle.dumps(a)) for a in analyses]
    compact = [len(pickle.dumps(a.compact())) for a in analyses]
    report = {
        "notes": len(analyses),
        "calls": len(local_ms),
        "in_ingress": _pct(local_ms),
        "router_deployment": _pct(remote_ms),
        "analysis_pickle_kb": _kb(sizes),
        "compact_analysis_pickle_kb": _kb(compact),
    }
    report["hop_cost_p50_ms"] = round(report["router_deployment"]["p50_ms"] - report["in_ingress"]["p50_ms"], 3)
    print(report)
    write_report(report, Path(args.output_dir) / "router_hop.json")
    return report


if __name__ == "__main__":
    main()
