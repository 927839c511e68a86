"""LLM tier vs fast tier on the same dev notes, in one run: notes/s, the slowdown ratio, F1 of each.

The paper behind clinie reports the LLM up to 28x slower than BERT; this measures our two tiers
on this machine. Both run in process through the public pipeline (`policy` fast-only / llm-only).

    python -m benchmarks.llm_vs_fast [--notes 20] [--model DIR] [--llm-model DIR_OR_HUB_ID]

With `--decoding free,constrained` it compares instead the LLM tier's decoding modes on the first
`--notes` dev notes (split rule of the fast tier: sorted by name, `random.Random(13)` shuffle, first
20): spans dropped by reason (`llm_dropped_*`), llm-only F1, and seconds per note. One engine serves
all modes (decoding is chosen per request); notes run one at a time, the modes taking turns on each,
on a started, warmed-up engine (start-up reported apart).

    python -m benchmarks.llm_vs_fast --decoding free,constrained --notes 4
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast, get_args

from benchmarks.fast_tier import dev_documents
from benchmarks.report import headline_f1, write_report
from clinie.brat import Document, document_from_result, read_corpus
from clinie.inputs import NoteInput
from clinie.paths import default_train_data
from clinie.schema import NoteResult
from clinie.scoring import score_documents
from clinie.split import split_corpus
from deployments.fast_tier.default import resolve_model_dir
from deployments.llm_tier.config import Decoding, LLMTierConfig
from deployments.llm_tier.extract import EXACT_CONFIDENCE
from serve_app.pipeline import Pipeline

DECODING_REPORT = "benchmarks/results/llm_decoding.json"


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


def split_dev_documents(data_dir: str | None) -> list[Document]:
    """The dev notes by the fast tier's split rule (no trained model needed), sorted by name."""
    from deployments.fast_tier.config import TrainConfig

    defaults = TrainConfig.model_fields
    docs = read_corpus(data_dir or default_train_data())
    return split_corpus(docs, defaults["dev_size"].default, defaults["seed"].default)[1]


async def _decode_notes(
    llm: LLMTierConfig, modes: list[str], docs: list[Document], on_note: Callable[..., None]
) -> tuple[float, dict[str, list[NoteResult | None]], dict[str, list[float]]]:
    from clinie.errors import LLMTimeout
    from deployments.llm_tier.engine import LLMTier, open_llm_tier

    t0 = time.perf_counter()
    engine, _ = open_llm_tier(llm)
    # Decoding is chosen per request, so one engine serves every mode: no second start-up, and the
    # modes take turns note by note (order alternating) so a busy machine slows them alike.
    tiers = {m: LLMTier(engine, llm.model_copy(update={"decoding": cast(Decoding, m)})) for m in modes}
    try:
        for tier in tiers.values():
            await tier.extract("warmup", "Patient denies chest pain.")  # first requests pay one-off set-up
        start_s = time.perf_counter() - t0
        results: dict[str, list[NoteResult | None]] = {m: [] for m in modes}
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        for i, d in enumerate(docs):  # one note at a time, so each note's seconds are its own
            for m in modes if i % 2 == 0 else modes[::-1]:
                t1 = time.perf_counter()
                try:
                    results[m].append(await tiers[m].extract(d.name, d.text))
                except LLMTimeout:
                    results[m].append(None)
                seconds[m].append(time.perf_counter() - t1)
                print(f"  {d.name} {m}: {seconds[m][-1]:.1f} s", flush=True)
            on_note(start_s, results, seconds)  # a long run killed half-way still leaves its numbers
        return start_s, results, seconds
    finally:
        engine.shutdown()


def compare_decoding(
    llm: LLMTierConfig, modes: list[str], docs: list[Document], output: str | None = None
) -> dict[str, Any]:
    """llm-only on `docs` under each decoding mode: drops by reason, F1, seconds per note (the report
    is rewritten to `output` after every note)."""

    def partial(start_s: float, results: dict[str, list[NoteResult | None]], seconds: dict[str, list[float]]) -> None:
        if output:
            done = docs[: len(seconds[modes[-1]])]
            write_report({"partial": True, "dev_notes": [d.name for d in done],
                          "decoding": _summary(modes, done, start_s, results, seconds)}, output)  # fmt: skip

    start_s, all_results, all_seconds = asyncio.run(_decode_notes(llm, modes, docs, partial))
    out = _summary(modes, docs, start_s, all_results, all_seconds)
    for mode in modes:
        print(f"{mode:12} {out[mode]['s_per_note']:6.2f} s/note  dropped {out[mode]['dropped']}  "
              f"F1 {out[mode]['f1']}", flush=True)  # fmt: skip
    return out


def _summary(
    modes: list[str],
    docs: list[Document],
    start_s: float,
    all_results: dict[str, list[NoteResult | None]],
    all_seconds: dict[str, list[float]],
) -> dict[str, Any]:
    out: dict[str, Any] = {"engine_start_s": round(start_s, 1)}
    for mode in modes:
        answered, seconds = all_results[mode], all_seconds[mode]
        results = [r for r in answered if r is not None]
        dropped: Counter[str] = Counter()
        for r in results:
            dropped.update({k.removeprefix("llm_dropped_"): int(v) for k, v in r.route.signals.items()
                            if k.startswith("llm_dropped_")})  # fmt: skip
        preds = {
            d.name: document_from_result(d.name, d.text, r)
            for d, r in zip(docs, answered, strict=True)
            if r is not None
        }
        out[mode] = {
            "s_per_note": round(sum(seconds) / len(seconds), 2),
            "s_per_note_each": [round(x, 2) for x in seconds],
            "timed_out": sum(r is None for r in answered),
            "entities": sum(len(r.entities) for r in results),
            "modifiers": sum(len(r.modifiers) for r in results),
            "relations": sum(len(r.relations) for r in results),
            "repaired_spans": sum(
                s.confidence < EXACT_CONFIDENCE for r in results for s in [*r.entities, *r.modifiers]
            ),
            "dropped": dict(sorted(dropped.items())),
            "f1": headline_f1(score_documents(docs, preds)),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notes", type=int, default=20, help="How many dev notes (from the model card's dev list).")
    p.add_argument("--model", help="Fast-tier model directory (default: the embedded default's held-out model).")
    p.add_argument("--llm-model", default="", help="LLM checkpoint dir or hub id (default: embedded SmolLM2).")
    p.add_argument("--output", help="JSON report path (default: benchmarks/results/llm_vs_fast.json, or "
                   "llm_decoding.json with --decoding).")  # fmt: skip
    p.add_argument(
        "--decoding",
        help="Compare the LLM tier's decoding modes instead (comma-separated: free,constrained) on the first "
        "--notes dev notes of the split rule; needs no fast-tier model.",
    )
    p.add_argument("--data", help="With --decoding: the annotated corpus (default: the training notes).")
    p.add_argument(
        "--llm-timeout", type=float, default=600.0, help="With --decoding: deadline per note, seconds (a shared "
        "CPU can take longer than the tier's 120 s default; a note past it is scored empty and counted)."
    )  # fmt: skip
    args = p.parse_args(argv)

    if args.decoding:
        modes = [m.strip() for m in args.decoding.split(",") if m.strip()]
        allowed = get_args(Decoding)
        if not modes or any(m not in allowed for m in modes):
            p.error(f"--decoding takes a comma-separated list of {', '.join(allowed)}")
        docs = split_dev_documents(args.data)[: args.notes]
        llm = LLMTierConfig(model=args.llm_model, request_timeout_s=args.llm_timeout)
        report = {
            "dev_notes": [d.name for d in docs],
            "llm_timeout_s": args.llm_timeout,
            "decoding": compare_decoding(llm, modes, docs, args.output or DECODING_REPORT),
            "note": "seconds per note: notes one at a time on a started, warmed-up engine",
        }
        write_report(report, args.output or DECODING_REPORT)
        return report

    model_dir = resolve_model_dir(args.model, held_out=True)
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
    write_report(report, args.output or "benchmarks/results/llm_vs_fast.json")
    return report


if __name__ == "__main__":
    main()
