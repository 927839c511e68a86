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

from serve_app import front_door
from serve_app.front_door import FrontDoor

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
    from deployments.fast_tier.config import SpanFloor
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
    try:
        span_floor = SpanFloor.parse(args.span_floor) if args.span_floor is not None else None
    except ValueError as exc:  # pydantic's ValidationError is one too (a floor out of [0, 1))
        raise UsageError(f"--span-floor: {exc}") from exc
    pipeline = Pipeline(
        model_dir=args.model,
        precision=args.precision,
        batch_size=args.batch_size,
        llm=LLMTierConfig.model_validate(llm_fields),
        router=router,
        span_floor=span_floor,
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


# -- evaluate / calibrate --------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from clinie.brat import read_corpus
    from clinie.predictions import evaluate_predictions
    from clinie.scoring import format_table

    try:
        gold = read_corpus(args.gold)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if not Path(args.pred).is_file():
        raise UsageError(f"predictions file not found: {args.pred}")
    report = evaluate_predictions(gold, Path(args.pred))
    text = format_table(report) if args.format == "table" else json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Choose the threshold of a policy and/or measure the gain table on a labelled set, and
    write the policy file (serve_app/calibrate.py)."""
    from router import PolicyConfigError
    from serve_app.calibrate import CalibrateOptions, CalibrationError, calibrate

    fields = {k: getattr(args, k) for k in CalibrateOptions.model_fields}
    try:
        summary = calibrate(CalibrateOptions.model_validate({k: v for k, v in fields.items() if v is not None}))
    except CalibrationError as exc:
        raise UsageError(str(exc)) from exc
    except PolicyConfigError as exc:
        print(f"clinie: error: the written policy file does not validate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(summary, indent=2))
    return 0


# -- train / build-default ----------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from clinie.paths import default_train_data
    from deployments.fast_tier.config import TrainConfig

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
        "relation_head": args.relation_head,
        "max_steps": args.max_steps,
        "max_notes": args.max_notes,
        "seed": args.seed,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields.setdefault("data_dir", default_train_data())
    if "output_dir" not in fields:
        raise UsageError("--output is required (or output_dir in --config)")
    try:
        cfg = TrainConfig.model_validate(fields)
    except ValidationError as exc:
        raise UsageError(f"invalid training config: {exc}") from exc
    if not Path(cfg.data_dir).is_dir():
        raise UsageError(f"training data folder not found: {cfg.data_dir}")
    from deployments.fast_tier.training.train import train

    out = train(cfg)
    print(json.dumps(_model_summary(out), indent=2))
    return 0


def _model_summary(out: Path) -> dict[str, Any]:
    """What `clinie train` and `clinie build-default` print: the model, and its dev scores, or for a
    model trained on every note, its recipe's (the same settings on the train split: recipe.py)."""
    from deployments.fast_tier.recipe import headline

    card = json.loads((out / "model_card.json").read_text())
    summary: dict[str, Any] = {"model_dir": str(out), "model": card["model"]}
    if card.get("dev_scores_int8"):
        summary["dev_scores"] = headline(card["dev_scores_int8"])
    elif card.get("recipe"):
        recipe = card["recipe"]
        summary["recipe_dev_scores"] = recipe["dev_scores_int8"]
        summary["recipe_measured_on"] = (
            f"{recipe['measured_model']}: the same settings trained on {recipe['train_notes']} notes, "
            f"scored on the {recipe['dev_notes']} dev notes this model also trained on"
        )
    return summary


def cmd_train_llm(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from clinie.paths import default_train_data
    from deployments.llm_tier.finetune import LoRAConfig, train_lora

    fields = {
        "data_dir": args.data or default_train_data(),
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
    from deployments.fast_tier.training.export import reexport

    reexport(Path(args.model))
    print(json.dumps({"model_dir": args.model, "exported": True}))
    return 0


def cmd_build_default(args: argparse.Namespace) -> int:
    from deployments.fast_tier.default import ensure_default_model

    try:
        path = ensure_default_model(split="train" if args.held_out else "all")
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    print(json.dumps(_model_summary(path), indent=2))
    return 0


# -- main ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the whole application locally and block until Ctrl-C / SIGTERM."""
    import signal
    import threading

    from serve_app import local

    config_file = Path(args.config) if args.config else local.LOCAL_CONFIG
    door = FrontDoor(args.front_door)
    try:
        front_door.check_tls(door, bool(args.tls_cert or args.tls_key))  # before any model is built
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    # usage errors before any model is built (a first run builds them for minutes)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path and not Path(path).is_file():
            raise UsageError(f"TLS file not found: {path}")
    try:
        cfg, raw = local.local_app_config(
            config_file,
            fast_tier_model=args.model,
            policies_file=args.policies,
            llm_enabled=False if args.no_llm else None,
        )
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from exc
    cfg = local.prepare_models(cfg)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    try:
        svc = local.start(
            cfg,
            raw,
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            num_cpus=args.num_cpus,
            tls=tls,
            door=door,
        )
    except ValueError as exc:  # a front door the environment contradicts
        raise UsageError(str(exc)) from exc
    ready = local.wait_ready(svc.http_url, timeout_s=300)
    print(
        f"clinie: serving HTTP on {svc.http_url} (docs: {svc.http_url}/docs), gRPC on {svc.grpc_target} "
        f"({door.value} front door); ready {svc.started_s + ready:.1f} s after start. Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )
    if svc.serve_logs is not None:  # serve_app/ray_upkeep.py: the replicas' lines are not printed here
        print(
            f"clinie: replica and access logs: {svc.serve_logs} (RAY_SERVE_LOG_TO_STDERR=1 prints them here)",
            file=sys.stderr,
            flush=True,
        )
    stop = threading.Event()
    # Both stop it cleanly (a shell may start background jobs with SIGINT ignored; we want Ctrl-C).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    print("clinie: shutting down", file=sys.stderr)
    local.stop()
    return 0


def _add_extract(sub: Any) -> None:
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
    e.add_argument(
        "--span-floor",
        metavar="FLOOR|ENTITY,MODIFIER",
        help="Calibrated confidence below which a span is not reported: one number for both kinds (0 reports "
        "every decoded span) or one for each (default: 0.4,0 — half the recipe's strict entity F1; modifiers all).",
    )
    e.add_argument("--llm-model", help="LLM tier model: checkpoint dir or hub id (default: embedded SmolLM2).")
    e.add_argument("--llm-lora", help="LoRA adapter folder (from `clinie train-llm`) served with the LLM.")
    e.add_argument("--llm-timeout", type=float, help="Deadline per note for the LLM tier, seconds (default 120).")
    e.add_argument("--quiet", "-q", action="store_true", help="No progress bars or summary.")
    e.set_defaults(func=cmd_extract)


def _add_serve(sub: Any) -> None:
    sv = sub.add_parser("serve", help="Start the Ray Serve application locally (HTTP + gRPC) on the default models.")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: %(default)s, local only).")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s).")
    sv.add_argument("--grpc-port", type=int, default=9000, help="gRPC port (default: %(default)s).")
    sv.add_argument("--config", help="Serve config YAML (default: serve_app/configs/serve.local.yaml).")
    sv.add_argument("--model", help="Fast-tier model directory (default: $CLINIE_MODEL_DIR or the embedded default).")
    sv.add_argument("--policies", help="Router policy file (default: $CLINIE_POLICIES or the checked-in one).")
    sv.add_argument("--no-llm", action="store_true", help="Do not deploy the LLM tier.")
    sv.add_argument("--num-cpus", type=int, help="Logical CPUs for the local Ray (default: cores + 2, at least 4).")
    sv.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key). gRPC stays plaintext.")
    sv.add_argument("--tls-key", help="PEM private key of --tls-cert.")
    front_door.add_option(
        sv,
        help="What listens on the ports: Ray Serve's proxy (default; TLS, retries a request whose Ingress replica "
        "died) or HAProxy straight to the Ingress replicas (fewer hops: more notes/s on few cores). "
        "README, 'Front door'.",
    )
    sv.set_defaults(func=cmd_serve)


def _add_evaluate(sub: Any) -> None:
    v = sub.add_parser("evaluate", help="Score predictions (JSONL) against a brat gold folder.")
    v.add_argument("--gold", required=True, help="brat folder (NAME.txt + NAME.ann).")
    v.add_argument("--pred", required=True, help="Predictions JSONL as written by `clinie extract`.")
    v.add_argument("--format", choices=["json", "table"], default="json", help="Output format.")
    v.add_argument("--output", "-o", help="Write the report here instead of stdout.")
    v.set_defaults(func=cmd_evaluate)


def _add_calibrate(sub: Any) -> None:
    c = sub.add_parser(
        "calibrate",
        help="Choose a routing policy's threshold, and measure the LLM tier's gain, on a labelled dev set.",
        description="Runs the fast tier on the gold notes, computes the router's signals and writes a "
        "policy file: with a target, a `calibrated` threshold policy that meets it on that set (thresholds "
        "are quantiles of the signal); with --llm-pred, a `gain` policy holding the measured gain of the "
        "LLM tier's answers per signal bucket, made the default (wrapped by the `default` budget) and "
        "recorded with the models it was measured on (`calibrated_for`).",
    )
    c.add_argument("--gold", required=True, help="brat folder of labelled notes (NAME.txt + NAME.ann).")
    c.add_argument("--model", help="Fast-tier model directory (default: $CLINIE_MODEL_DIR or the embedded default).")
    c.add_argument("--signal", default="min_token_prob", help="Sentence signal to threshold (default: %(default)s).")
    tg = c.add_mutually_exclusive_group()  # or only --llm-pred (the gain table): checked in cmd_calibrate
    tg.add_argument("--target-rate", type=float, help="Fraction of sentences (or notes, --unit note) to escalate.")
    tg.add_argument("--target-f1", type=float, help="F1 to reach at the lowest escalation rate (needs --llm-pred).")
    tg.add_argument("--budget-per-minute", type=float, help="LLM cost units per minute (needs --notes-per-minute).")
    c.add_argument(
        "--unit",
        choices=["sentence", "note"],
        default="sentence",
        help="With --target-rate: escalate sentences, or whole notes whose worst sentence is flagged.",
    )
    c.add_argument(
        "--llm-pred",
        help="The LLM tier's predictions (JSONL, `clinie extract --policy llm-only`) on the gold notes: measures "
        "the gain table (policy `gain`, made the default) and serves --target-f1.",
    )
    c.add_argument("--llm-model-id", help="LLM model id the predictions came from (default: their models.llm).")
    c.add_argument(
        "--min-gain-per-cost",
        type=float,
        default=0.0,
        help="Price of the gain policy: least gain per cost unit of a sentence (default 0: any gain).",
    )
    c.add_argument(
        "--margin-se", type=float, default=1.0, help="Gain policy acts on gain minus this many std errors (1)."
    )
    c.add_argument(
        "--gain-metrics",
        default="relaxed_entities,relaxed_modifiers,relaxed_relations",
        help="F1s whose mean the gain measures, comma-separated (default: %(default)s).",
    )
    c.add_argument(
        "--buckets", type=int, help="Quantile buckets of the gain table (default: 50+ sentences each, <=10)."
    )
    c.add_argument("--f1-metric", default="relaxed_entities", help="With --target-f1: which F1 (default: %(default)s).")
    c.add_argument("--notes-per-minute", type=float, help="With --budget-per-minute: expected notes per minute.")
    c.add_argument("--base", help="Policy file to start from (default: serve_app/configs/policies.default.yaml).")
    c.add_argument("--output", "-o", required=True, help="Policy file (.yaml) to write.")
    c.set_defaults(func=cmd_calibrate)


def _add_train(sub: Any) -> None:
    t = sub.add_parser("train", help="Train, export (ONNX fp32 + int8) and evaluate a fast tier.")
    t.add_argument("--data", help="brat training folder (default: $CLINIE_TRAIN_DATA or ../shared/...).")
    t.add_argument("--output", "-o", help="Model directory to write.")
    t.add_argument("--encoder", help="Encoder: local directory or hub id (default: embedded all-MiniLM-L6-v2).")
    t.add_argument("--config", help="JSON file of TrainConfig fields; flags override it.")
    t.add_argument("--name", help="Model name in results.")
    t.add_argument("--split", choices=["train", "all"], help="Fit on the train split (default) or all notes.")
    t.add_argument("--dev-size", type=int, help="Dev notes held out (default 20).")
    t.add_argument("--tagger-epochs", type=float, help="Tagger epochs.")
    t.add_argument(
        "--relation-head",
        choices=["span_pair", "markers"],
        help="Relations from the tagger's own pass (span_pair, default) or a second marked-sentence encoder.",
    )
    t.add_argument("--relation-epochs", type=float, help="Relation classifier epochs (markers only).")
    t.add_argument("--max-steps", type=int, help="Cap optimiser steps per model (smoke runs).")
    t.add_argument("--max-notes", type=int, help="Use only the first N notes (smoke runs).")
    t.add_argument("--seed", type=int, help="Seed (default 13).")
    t.set_defaults(func=cmd_train)


def _add_train_llm(sub: Any) -> None:
    lt = sub.add_parser("train-llm", help="LoRA fine-tuning of the LLM tier on the training split (peft).")
    lt.add_argument("--output", "-o", required=True, help="Adapter folder to write.")
    lt.add_argument("--data", help="brat training folder (default: $CLINIE_TRAIN_DATA or ../shared/...).")
    lt.add_argument("--model", help="Base model dir or hub id (default: embedded SmolLM2-135M-Instruct).")
    lt.add_argument("--max-steps", type=int, help="Optimiser steps (default 200).")
    lt.add_argument("--max-notes", type=int, help="Use only the first N notes (smoke runs).")
    lt.add_argument("--device", choices=["cpu", "cuda"], help="Where to train (default cpu).")
    lt.set_defaults(func=cmd_train_llm)


def _add_export(sub: Any) -> None:
    x = sub.add_parser("export", help="Re-export a trained model's ONNX fp32 + int8 files from its PyTorch weights.")
    x.add_argument("model", help="Model directory written by `clinie train`.")
    x.set_defaults(func=cmd_export)


def _add_build_default(sub: Any) -> None:
    b = sub.add_parser(
        "build-default",
        help="Build (or find) the cached embedded default model: the default settings trained on every annotated note.",
    )
    b.add_argument(
        "--held-out",
        action="store_true",
        help="The held-out model instead: the same settings trained on the train split only, for scoring on the dev "
        "notes (the benchmarks build it when they need it).",
    )
    b.set_defaults(func=cmd_build_default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clinie", description="Clinical information extraction.")
    p.add_argument("-v", "--verbose", action="store_true", help="More log output on stderr.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_extract(sub)
    _add_serve(sub)
    _add_evaluate(sub)
    _add_calibrate(sub)
    _add_train(sub)
    _add_train_llm(sub)
    _add_export(sub)
    _add_build_default(sub)
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
