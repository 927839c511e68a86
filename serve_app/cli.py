"""`clinie`: the command line (service-contract.md, "CLI").

Exit status: 0 done; 1 a run failed; 2 bad arguments (unknown policy, missing input, ...).
Results go to stdout (or --output) as JSONL; progress and messages go to stderr. Note text never
appears in messages.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments: reported on stderr with exit status 2."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="clinie: %(message)s", stream=sys.stderr)
    logging.getLogger("clinie").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("deployments").setLevel(logging.INFO if verbose else logging.WARNING)
    # onnxruntime.quantization logs every tensor at INFO through the root logger.
    logging.getLogger().setLevel(logging.WARNING)


# -- extract ----------------------------------------------------------------------------------


def cmd_extract(args: argparse.Namespace) -> int:
    from clinie.inputs import InputPathError, read_inputs
    from clinie.schema import NoteError
    from deployments.llm_tier.config import LLMTierConfig
    from router import PolicyConfigError
    from serve_app.pipeline import Pipeline, PolicyError, load_router

    try:
        router = load_router(args.policies)
    except PolicyConfigError as exc:
        raise UsageError(str(exc)) from exc
    llm_fields: dict[str, Any] = {"model": args.llm_model or ""}
    if args.llm_lora:
        llm_fields["lora_adapter"] = args.llm_lora
    if args.llm_timeout is not None:
        llm_fields["request_timeout_s"] = args.llm_timeout
    pipeline = Pipeline(
        model_dir=args.model,
        precision=args.precision,
        batch_size=args.batch_size,
        llm=LLMTierConfig.model_validate(llm_fields),
        router=router,
    )
    try:
        pipeline.check_policy(args.policy)  # refuse an unknown policy before loading anything
        notes = read_inputs(args.inputs)
    except (InputPathError, PolicyError) as exc:
        raise UsageError(str(exc)) from exc
    results = pipeline.run(notes, policy=args.policy, progress=not args.quiet)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for r in results:
            out.write(json.dumps(r.model_dump(mode="json"), ensure_ascii=False) + "\n")
    finally:
        if args.output:
            out.close()
    errors = sum(isinstance(r, NoteError) for r in results)
    if not args.quiet:
        print(f"clinie: {len(results)} notes, {errors} with errors", file=sys.stderr)
    return 0


# -- evaluate ---------------------------------------------------------------------------------


def load_predictions(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Prediction lines by note_id; returns (predictions, lines skipped as unreadable or errors)."""
    preds: dict[str, dict[str, Any]] = {}
    skipped = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(obj, dict) or "error" in obj or obj.get("note_id") is None:
                skipped += 1
                continue
            preds[str(obj["note_id"])] = obj
    return preds, skipped


def prediction_document(name: str, text: str, obj: dict[str, Any]) -> tuple[Any, int]:
    """A prediction line as a Document; returns (document, spans or relations dropped as invalid)."""
    from clinie.brat import Document, GoldRelation, GoldSpan
    from clinie.schema import ENTITY_TYPES, MODIFIER_TYPES

    spans, dropped = [], 0
    for group, labels in (("entities", ENTITY_TYPES), ("modifiers", MODIFIER_TYPES)):
        for s in obj.get(group) or []:
            try:
                span = GoldSpan(id=str(s["id"]), label=s["type"], start=int(s["start"]), end=int(s["end"]))
            except (KeyError, TypeError, ValueError):
                dropped += 1
                continue
            if span.label not in labels or not 0 <= span.start < span.end <= len(text):
                dropped += 1
                continue
            spans.append(span)
    ids = {s.id for s in spans}
    rels = []
    for r in obj.get("relations") or []:
        if isinstance(r, dict) and r.get("entity") in ids and r.get("modifier") in ids:
            rels.append(GoldRelation(entity=r["entity"], modifier=r["modifier"]))
        else:
            dropped += 1
    return Document(name=name, text=text, spans=spans, relations=rels), dropped


def cmd_evaluate(args: argparse.Namespace) -> int:
    from clinie.brat import read_corpus
    from clinie.scoring import format_table, score_documents

    try:
        gold = read_corpus(args.gold)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if not Path(args.pred).is_file():
        raise UsageError(f"predictions file not found: {args.pred}")
    preds, skipped = load_predictions(Path(args.pred))
    docs, dropped = {}, 0
    for g in gold:
        if g.name in preds:
            docs[g.name], d = prediction_document(g.name, g.text, preds[g.name])
            dropped += d
    scores = score_documents(gold, docs)
    report: dict[str, Any] = {
        **scores.as_dict(),
        "notes": len(gold),
        "predicted_notes": len(docs),
        "missing_predictions": sorted(g.name for g in gold if g.name not in docs),
        "unknown_predictions": sorted(set(preds) - {g.name for g in gold}),
        "skipped_prediction_lines": skipped,
        "dropped_invalid_items": dropped,
    }
    text = format_table(report) if args.format == "table" else json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


# -- train / build-default ----------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from deployments.fast_tier.config import TrainConfig
    from deployments.fast_tier.default import default_data_dir

    fields: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    overrides = {
        "data_dir": args.data,
        "output_dir": args.output,
        "encoder": args.encoder,
        "name": args.name,
        "split": args.split,
        "dev_size": args.dev_size,
        "tagger_epochs": args.tagger_epochs,
        "relation_epochs": args.relation_epochs,
        "max_steps": args.max_steps,
        "max_notes": args.max_notes,
        "seed": args.seed,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields.setdefault("data_dir", default_data_dir())
    if "output_dir" not in fields:
        raise UsageError("--output is required (or output_dir in --config)")
    try:
        cfg = TrainConfig.model_validate(fields)
    except ValidationError as exc:
        raise UsageError(f"invalid training config: {exc}") from exc
    if not Path(cfg.data_dir).is_dir():
        raise UsageError(f"training data folder not found: {cfg.data_dir}")
    from deployments.fast_tier.train import train

    out = train(cfg)
    card = json.loads((out / "model_card.json").read_text())
    print(json.dumps({"model_dir": str(out), "model": card["model"], "dev_scores": _headline(card)}, indent=2))
    return 0


def _headline(card: dict[str, Any]) -> dict[str, float]:
    scores = card.get("dev_scores_int8")
    if not scores:
        return {}
    return {
        f"{mode}_{group}_f1": scores[mode][group]["overall"]["f1"]
        for mode in ("strict", "relaxed")
        for group in ("entities", "modifiers", "relations")
    }


def cmd_train_llm(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from deployments.fast_tier.default import default_data_dir
    from deployments.llm_tier.finetune import LoRAConfig, train_lora

    fields = {
        "data_dir": args.data or default_data_dir(),
        "output_dir": args.output,
        "model": args.model or "",
        "max_steps": args.max_steps,
        "max_notes": args.max_notes,
        "device": args.device,
    }
    try:
        cfg = LoRAConfig.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise UsageError(f"invalid LoRA config: {exc}") from exc
    if not Path(cfg.data_dir).is_dir():
        raise UsageError(f"training data folder not found: {cfg.data_dir}")
    out = train_lora(cfg)
    print(json.dumps({"adapter_dir": str(out)}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deployments.fast_tier.export import reexport

    reexport(Path(args.model))
    print(json.dumps({"model_dir": args.model, "exported": True}))
    return 0


def cmd_build_default(args: argparse.Namespace) -> int:
    from deployments.fast_tier.default import ensure_default_model

    try:
        path = ensure_default_model()
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    card = json.loads((path / "model_card.json").read_text())
    print(json.dumps({"model_dir": str(path), "model": card["model"], "dev_scores": _headline(card)}, indent=2))
    return 0


# -- main ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the whole application locally and block until Ctrl-C / SIGTERM."""
    import signal
    import threading

    from deployments.fast_tier.default import resolve_model_dir
    from serve_app import local

    config_file = Path(args.config) if args.config else local.LOCAL_CONFIG
    try:
        cfg, _ = local.local_app_config(
            config_file,
            fast_tier_model=args.model,
            policies_file=args.policies,
            llm_enabled=False if args.no_llm else None,
        )
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from exc
    # Build (first run) or find the models here, with progress bars, before any replica starts.
    model_dir = resolve_model_dir(cfg.fast_tier_model)
    cfg = cfg.model_copy(update={"fast_tier_model": str(model_dir)})
    if cfg.llm_enabled and not cfg.llm.model and cfg.llm_config is None:
        from serve_app.pipeline import llm_available

        if llm_available():
            from deployments.llm_tier.default_model import ensure_default_llm

            ensure_default_llm()
        else:
            print("clinie: vllm is not installed: serving without the LLM tier", file=sys.stderr)
            cfg = cfg.model_copy(update={"llm_enabled": False})
    svc = local.start(cfg, host=args.host, port=args.port, grpc_port=args.grpc_port, num_cpus=args.num_cpus)
    ready = local.wait_ready(svc.http_url, timeout_s=300)
    print(
        f"clinie: serving HTTP on {svc.http_url} (docs: {svc.http_url}/docs), gRPC on {svc.grpc_target}; "
        f"ready {svc.started_s + ready:.1f} s after start. Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    print("clinie: shutting down", file=sys.stderr)
    local.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clinie", description="Clinical information extraction.")
    p.add_argument("-v", "--verbose", action="store_true", help="More log output on stderr.")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("extract", help="Extract entities, modifiers and relations from notes (in process).")
    e.add_argument("inputs", nargs="+", metavar="INPUT", help=".txt file, folder of .txt files, or .jsonl")
    e.add_argument("--output", "-o", help="Write JSONL here instead of stdout.")
    e.add_argument("--policy", help="Routing policy name (default: the policy file's default_policy, `default`).")
    e.add_argument(
        "--policies",
        help="Router policy file, YAML/JSON (default: $CLINIE_POLICIES or serve_app/configs/policies.default.yaml).",
    )
    e.add_argument(
        "--model", help="Trained fast-tier model directory (default: $CLINIE_MODEL_DIR or the embedded default)."
    )
    e.add_argument("--precision", choices=["int8", "fp32"], default="int8", help="ONNX variant (default: int8).")
    e.add_argument("--batch-size", type=int, default=16, help="Windows per model call.")
    e.add_argument("--llm-model", help="LLM tier model: checkpoint dir or hub id (default: embedded SmolLM2).")
    e.add_argument("--llm-lora", help="LoRA adapter folder (from `clinie train-llm`) served with the LLM.")
    e.add_argument("--llm-timeout", type=float, help="Deadline per note for the LLM tier, seconds (default 120).")
    e.add_argument("--quiet", "-q", action="store_true", help="No progress bars or summary.")
    e.set_defaults(func=cmd_extract)

    sv = sub.add_parser("serve", help="Start the Ray Serve application locally (HTTP + gRPC) on the default models.")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: %(default)s, local only).")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s).")
    sv.add_argument("--grpc-port", type=int, default=9000, help="gRPC port (default: %(default)s).")
    sv.add_argument("--config", help="Serve config YAML (default: serve_app/configs/serve.local.yaml).")
    sv.add_argument("--model", help="Fast-tier model directory (default: $CLINIE_MODEL_DIR or the embedded default).")
    sv.add_argument("--policies", help="Router policy file (default: $CLINIE_POLICIES or the checked-in one).")
    sv.add_argument("--no-llm", action="store_true", help="Do not deploy the LLM tier.")
    sv.add_argument("--num-cpus", type=int, help="Logical CPUs for the local Ray (default: cores + 2, at least 4).")
    sv.set_defaults(func=cmd_serve)

    v = sub.add_parser("evaluate", help="Score predictions (JSONL) against a brat gold folder.")
    v.add_argument("--gold", required=True, help="brat folder (NAME.txt + NAME.ann).")
    v.add_argument("--pred", required=True, help="Predictions JSONL as written by `clinie extract`.")
    v.add_argument("--format", choices=["json", "table"], default="json", help="Output format.")
    v.add_argument("--output", "-o", help="Write the report here instead of stdout.")
    v.set_defaults(func=cmd_evaluate)

    t = sub.add_parser("train", help="Train, export (ONNX fp32 + int8) and evaluate a fast tier.")
    t.add_argument("--data", help="brat training folder (default: $CLINIE_TRAIN_DATA or ../shared/...).")
    t.add_argument("--output", "-o", help="Model directory to write.")
    t.add_argument("--encoder", help="Encoder: local directory or hub id (default: embedded all-MiniLM-L6-v2).")
    t.add_argument("--config", help="JSON file of TrainConfig fields; flags override it.")
    t.add_argument("--name", help="Model name in results.")
    t.add_argument("--split", choices=["train", "all"], help="Fit on the train split (default) or all notes.")
    t.add_argument("--dev-size", type=int, help="Dev notes held out (default 20).")
    t.add_argument("--tagger-epochs", type=float, help="Tagger epochs.")
    t.add_argument("--relation-epochs", type=float, help="Relation classifier epochs.")
    t.add_argument("--max-steps", type=int, help="Cap optimiser steps per model (smoke runs).")
    t.add_argument("--max-notes", type=int, help="Use only the first N notes (smoke runs).")
    t.add_argument("--seed", type=int, help="Seed (default 13).")
    t.set_defaults(func=cmd_train)

    lt = sub.add_parser("train-llm", help="LoRA fine-tuning of the LLM tier on the training split (peft).")
    lt.add_argument("--output", "-o", required=True, help="Adapter folder to write.")
    lt.add_argument("--data", help="brat training folder (default: $CLINIE_TRAIN_DATA or ../shared/...).")
    lt.add_argument("--model", help="Base model dir or hub id (default: embedded SmolLM2-135M-Instruct).")
    lt.add_argument("--max-steps", type=int, help="Optimiser steps (default 200).")
    lt.add_argument("--max-notes", type=int, help="Use only the first N notes (smoke runs).")
    lt.add_argument("--device", choices=["cpu", "cuda"], help="Where to train (default cpu).")
    lt.set_defaults(func=cmd_train_llm)

    x = sub.add_parser("export", help="Re-export a trained model's ONNX fp32 + int8 files from its PyTorch weights.")
    x.add_argument("model", help="Model directory written by `clinie train`.")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("build-default", help="Build (or find) the cached embedded default model.")
    b.set_defaults(func=cmd_build_default)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"clinie: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"clinie: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (`clinie extract ... | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
