"""LLM tier vs fast tier on the same dev notes, in one run: notes/s, the slowdown ratio, F1 of each.

The paper behind clinie reports the LLM up to 28x slower than BERT; this measures our two tiers
on this machine. Both run in process through the public pipeline (`policy` fast-only / llm-only).

    python -m benchmarks.llm_vs_fast [--notes 20] [--model DIR] [--llm-model DIR_OR_HUB_ID]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.fast_tier import dev_documents
from benchmarks.report import headline_f1, write_report
from clinie.brat import document_from_result
from clinie.inputs import NoteInput
from clinie.schema import NoteResult
from clinie.scoring import score_documents
from deployments.fast_tier.default import resolve_model_dir
from deployments.llm_tier.config import LLMTierConfig
from serve_app.pipeline import Pipeline


def run(pipeline: Pipeline, policy: str, docs: list, label: str) -> dict[str, Any]:
    notes = [NoteInput(note_id=d.name, text=d.text) for d in docs]
    t0 = time.perf_counter()
    results = pipeline.run(notes, policy=policy)
    wall = time.perf_counter() - t0
    ok = {r.note_id: r for r in results if isinstance(r, NoteResult)}
    preds = {d.name: document_from_result(d.name, d.text, ok[d.name]) for d in docs if d.name in ok}
    scores = score_documents(docs, preds)
    out = {
        "notes": len(docs),
        "errors": len(docs) - len(ok),
        "wall_s": round(wall, 2),
        "notes_per_s": round(len(docs) / wall, 4),
        "f1": headline_f1(scores),
    }
    print(f"{label:10} {out['notes_per_s']:8.3f} notes/s  wall {wall:7.1f} s  F1 {out['f1']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notes", type=int, default=20, help="How many dev notes (from the model card's dev list).")
    p.add_argument("--model", help="Fast-tier model directory (default: the embedded default).")
    p.add_argument("--llm-model", default="", help="LLM checkpoint dir or hub id (default: embedded SmolLM2).")
    p.add_argument("--output", default="benchmarks/results/llm_vs_fast.json", help="JSON report path.")
    args = p.parse_args(argv)

    model_dir = resolve_model_dir(args.model)
    docs = dev_documents(model_dir)[: args.notes]
    pipeline = Pipeline(model_dir=model_dir, llm=LLMTierConfig(model=args.llm_model))
    pipeline.run([NoteInput(note_id="warmup", text=docs[0].text)], policy="fast-only")
    fast = run(pipeline, "fast-only", docs, "fast tier")
    # The LLM engine starts inside pipeline.run; its start-up is reported apart from throughput.
    llm = run(pipeline, "llm-only", docs, "LLM tier")
    report = {
        "dev_notes": len(docs),
        "fast": fast,
        "llm": llm,
        "llm_slowdown": round(fast["notes_per_s"] / max(llm["notes_per_s"], 1e-9), 1),
        "note": "LLM wall time includes its engine start-up (about 25 s on CPU for the default model)",
    }
    print(f"LLM tier is {report['llm_slowdown']}x slower than the fast tier (engine start-up included)")
    write_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
