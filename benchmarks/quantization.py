"""The int8 recipe against its alternatives, on this machine: quality, fidelity to fp32, speed.

How much int8 costs in F1 and how much it gains in speed depend on the CPU (VNNI or AVX2 alone:
ONNX Runtime's u8s8 kernels sum pairs of products in 16 bits on AVX2, which can saturate) more
than on the model. This re-quantizes one model's fp32 tagger graph with each variant
(`export.QuantOptions`; the model's other files are shared, nothing is retrained) and measures,
on the same notes, in one run:

- F1 on the dev notes (the held-out model's), and each variant's change against the shipped
  recipe with a 95% paired bootstrap interval (`clinie.scoring.f1_change`): 20 notes resolve about
  half a point, so most differences between int8 variants are inside it;
- fidelity: each variant's answers scored against ONNX fp32's on unannotated notes (`--agreement`),
  what quantizing moved in the output, without gold-note noise;
- speed: a pass over the dev notes, one note at a time, in interleaved rounds (median round).

    python -m benchmarks.quantization [--model DIR] [--variant NAME ...] [--repeat 3] [--agreement 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fast_tier import CHANGE_GROUPS, UNLABELED, answers, dev_documents, unlabeled_notes
from benchmarks.report import cpu_info, headline_f1, write_report
from clinie.brat import Document
from clinie.scoring import f1_change, score_documents
from deployments.fast_tier.config import TAGGER_FILES, EngineConfig
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.engine import FastTierEngine
from deployments.fast_tier.training.export import QuantOptions, quantize

LAYER0 = "/layer.0/"
VARIANTS: dict[str, QuantOptions] = {
    "shipped": QuantOptions(),  # 7-bit int8 weights per channel, the first layer in fp32
    "8bit_weights": QuantOptions(reduce_range=False),  # the recipe before v3
    "uint8_weights": QuantOptions(weight_type="uint8", reduce_range=False),  # u8u8 kernels: no saturation
    "per_tensor": QuantOptions(per_channel=False),
    "all_layers_int8": QuantOptions(fp32_nodes=()),
    "layer0_attention_fp32": QuantOptions(fp32_nodes=(f"{LAYER0}attention/",)),
    "layer0_ffn_fp32": QuantOptions(fp32_nodes=(f"{LAYER0}intermediate/", f"{LAYER0}output/")),
}


def variant_dir(model_dir: Path, root: Path, name: str, options: QuantOptions) -> Path:
    """A model folder that is `model_dir` with its int8 tagger made by `options` (links to the rest)."""
    out = root / name
    out.mkdir()
    for path in model_dir.iterdir():
        if path.name != TAGGER_FILES["int8"]:
            os.symlink(path, out / path.name)
    quantize(model_dir / TAGGER_FILES["fp32"], out / TAGGER_FILES["int8"], options)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Model directory (default: the embedded default's held-out model).")
    p.add_argument(
        "--variant",
        action="append",
        choices=sorted(VARIANTS),
        help="Variants to measure beside `shipped` (repeatable; default: all).",
    )
    p.add_argument("--repeat", type=int, default=3, help="Interleaved speed rounds; the median is kept.")
    p.add_argument("--agreement", type=int, default=100, help=f"Unannotated notes from {UNLABELED.name} (0: skip).")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime threads.")
    p.add_argument("--output", default="benchmarks/results/quantization.json", help="JSON report path.")
    args = p.parse_args(argv)

    model_dir = resolve_model_dir(args.model, held_out=True)
    if not (model_dir / TAGGER_FILES["fp32"]).exists():
        raise SystemExit(f"{model_dir} has no fp32 tagger graph to quantize (trained without export_fp32)")
    docs = dev_documents(model_dir)
    dev = [(d.name, d.text) for d in docs]
    unlabeled = unlabeled_notes(args.agreement)
    names = ["shipped", *[v for v in (args.variant or VARIANTS) if v != "shipped"]]
    root = Path(tempfile.mkdtemp(prefix="clinie-quant-"))
    try:
        engines = {
            "onnx_fp32": FastTierEngine(
                EngineConfig(model_dir=model_dir, precision="fp32", intra_op_threads=args.threads)
            )
        }
        for name in names:
            print(f"quantizing: {name} {VARIANTS[name].model_dump()}", flush=True)
            folder = variant_dir(model_dir, root, name, VARIANTS[name])
            engines[name] = FastTierEngine(
                EngineConfig(model_dir=folder, precision="int8", intra_op_threads=args.threads)
            )
        for engine in engines.values():
            engine.extract([dev[0]])  # warm-up
        seconds: dict[str, list[float]] = {k: [] for k in engines}
        preds: dict[str, dict[str, Document]] = {}
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat}: one pass over {len(dev)} dev notes per variant ...", flush=True)
            for name, engine in engines.items():
                t0 = time.perf_counter()
                preds[name] = answers(engine, dev)
                seconds[name].append(time.perf_counter() - t0)
        if unlabeled:
            print(f"fidelity: {len(unlabeled)} unannotated notes per variant ...", flush=True)
            reference = answers(engines["onnx_fp32"], unlabeled)
        rows: dict[str, Any] = {}
        for name in engines:
            row: dict[str, Any] = {
                "options": VARIANTS[name].model_dump(mode="json") if name in VARIANTS else None,
                "dev_pass_s": round(float(np.median(seconds[name])), 3),
                "dev_f1": headline_f1(score_documents(docs, preds[name])),
            }
            row["speed_vs_shipped"] = round(float(np.median(seconds["shipped"])) / row["dev_pass_s"], 3)
            if name != "shipped":
                row["f1_change_vs_shipped"] = {
                    f"{mode}_{group}": f1_change(docs, preds["shipped"], preds[name], mode, group).model_dump(
                        include={"points", "low", "high"}
                    )
                    for mode, group in CHANGE_GROUPS
                }
            if unlabeled and name != "onnx_fp32":
                row["f1_against_fp32_unlabeled"] = headline_f1(
                    score_documents(list(reference.values()), answers(engines[name], unlabeled))
                )
            rows[name] = row
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "model_dir": str(model_dir),
        "dev_notes": len(docs),
        "unlabeled_notes": len(unlabeled),
        "repeat": args.repeat,
        "threads": args.threads,
        "cpu": cpu_info(),
        "variants": rows,
    }
    print_table(rows)
    write_report(report, args.output)
    return report


def print_table(rows: dict[str, Any]) -> None:
    fidelity = "vs fp32, unannotated: ent s/r, rel r"
    print(f"\n{'variant':24} {'pass s':>7} {'speed':>6} {'ent F1 s/r':>12} {'rel r':>6}  {fidelity:>36}")
    for name, r in rows.items():
        f = r["dev_f1"]
        agree = r.get("f1_against_fp32_unlabeled")
        fid = (
            f"{agree['strict_entities']:.3f}/{agree['relaxed_entities']:.3f} {agree['relaxed_relations']:.3f}"
            if agree
            else "(reference)"
        )
        print(
            f"{name:24} {r['dev_pass_s']:7.2f} {r['speed_vs_shipped']:5.2f}x "
            f"{f['strict_entities']:.3f}/{f['relaxed_entities']:.3f} {f['relaxed_relations']:6.3f}  {fid:>36}"
        )
        for group, c in (r.get("f1_change_vs_shipped") or {}).items():
            interval = f"95% interval {c['low']:+.2f} to {c['high']:+.2f}"
            print(f"{'':24}   {group} vs shipped: {c['points']:+.2f} points ({interval})")


if __name__ == "__main__":
    main()
