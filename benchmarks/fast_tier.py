"""Fast-tier speed and quality: PyTorch fp32 eager vs ONNX fp32 vs ONNX int8, side by side, one run.

Same trained model, same dev notes (the model card's held-out split), same pre/post-processing:
only the backend differs. Per-note latency is measured one note at a time (the serving case);
throughput is notes and word-pieces per second over that loop. F1 is scored on the dev notes.

    python -m benchmarks.fast_tier [--model DIR] [--repeat 1] [--output benchmarks/results/fast_tier.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import headline_f1, write_report
from clinie.brat import Document, document_from_result, read_corpus
from clinie.schema import NoteResult
from clinie.scoring import score_documents
from deployments.fast_tier.config import EngineConfig
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.engine import FastTierEngine


def dev_documents(model_dir: Path) -> list[Document]:
    card = json.loads((model_dir / "model_card.json").read_text())
    names = set(card["data"]["dev_notes"])
    if not names:
        raise SystemExit("the model card lists no dev notes (trained with split=all): nothing honest to score")
    return [d for d in read_corpus(card["data"]["dir"]) if d.name in names]


def measure(engine: FastTierEngine, docs: list[Document], repeat: int) -> dict[str, Any]:
    engine.extract([("warmup", docs[0].text)])
    latencies, results = [], {}
    tokens = sum(len(engine.tokenizer.encode(d.text, add_special_tokens=False).ids) for d in docs)
    start = time.perf_counter()
    for _ in range(repeat):
        for d in docs:
            t0 = time.perf_counter()
            (r,) = engine.extract([(d.name, d.text)])
            latencies.append((time.perf_counter() - t0) * 1000)
            assert isinstance(r, NoteResult)
            results[d.name] = r
    wall = time.perf_counter() - start
    preds = {d.name: document_from_result(d.name, d.text, results[d.name]) for d in docs}
    scores = score_documents(docs, preds)
    return {
        "notes_per_s": round(len(docs) * repeat / wall, 3),
        "tokens_per_s": round(tokens * repeat / wall, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "f1": headline_f1(scores),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Model directory (default: $CLINIE_MODEL_DIR or the embedded default).")
    p.add_argument("--repeat", type=int, default=1, help="Passes over the dev notes per variant.")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Threads for torch and ORT.")
    p.add_argument("--output", default="benchmarks/results/fast_tier.json", help="JSON report path.")
    args = p.parse_args(argv)

    import torch

    from deployments.fast_tier.training.torch_backend import torch_backends

    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    docs = dev_documents(model_dir)
    variants = {
        "torch_fp32": lambda: FastTierEngine(
            EngineConfig(model_dir=model_dir, precision="fp32"), backends=torch_backends(model_dir)
        ),
        "onnx_fp32": lambda: FastTierEngine(
            EngineConfig(model_dir=model_dir, precision="fp32", intra_op_threads=args.threads)
        ),
        "onnx_int8": lambda: FastTierEngine(
            EngineConfig(model_dir=model_dir, precision="int8", intra_op_threads=args.threads)
        ),
    }
    rows = {}
    for name, make in variants.items():
        print(f"measuring {name} on {len(docs)} dev notes ...", flush=True)
        rows[name] = measure(make(), docs, args.repeat)
    base = rows["torch_fp32"]
    for row in rows.values():
        row["speedup_vs_torch_fp32"] = round(row["notes_per_s"] / base["notes_per_s"], 2)
    report = {
        "model_dir": str(model_dir),
        "dev_notes": len(docs),
        "repeat": args.repeat,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "variants": rows,
        "int8_f1_change_points": {k: round(100 * (rows["onnx_int8"]["f1"][k] - base["f1"][k]), 2) for k in base["f1"]},
    }
    head = ["notes/s", "tok/s", "p50 ms", "p95 ms", "speedup"]
    print(f"\n{'variant':12} " + " ".join(f"{h:>8}" for h in head) + f" {'ent F1 s/r':>12} {'rel F1 r':>9}")
    for name, r in rows.items():
        f = r["f1"]
        print(
            f"{name:12} {r['notes_per_s']:8.2f} {r['tokens_per_s']:9.0f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
            f"{r['speedup_vs_torch_fp32']:7.2f}x {f['strict_entities']:.3f}/{f['relaxed_entities']:.3f} "
            f"{f['relaxed_relations']:9.3f}"
        )
    print("int8 F1 change vs torch fp32 (points):", report["int8_f1_change_points"])
    write_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
