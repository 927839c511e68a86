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


# -- calibrate ----------------------------------------------------------------------------------

DEFAULT_POLICY_FILE = Path(__file__).resolve().parent / "configs" / "policies.default.yaml"
FALLBACK_BUDGET = {"rate_per_minute": 600_000, "burst": 100_000}  # as router.config.fallback_config


def _check_calibrate_args(args: argparse.Namespace) -> None:
    """Everything about the arguments that can be refused before any model is loaded."""
    from router.policies.gain import METRICS
    from router.signals import SIGNALS
    from router.simulate import F1_KEYS

    known = sorted(k for k, s in SIGNALS.items() if s.scope == "sentence")
    if args.signal not in known:
        extra = " (a note-level signal: use the threshold policy's ood_threshold)" if args.signal in SIGNALS else ""
        raise UsageError(f"unknown signal {args.signal!r}{extra}; known sentence signals: {', '.join(known)}")
    targets = (args.target_rate, args.target_f1, args.budget_per_minute)
    if all(t is None for t in targets) and not args.llm_pred:
        raise UsageError(
            "one of --target-rate, --target-f1, --budget-per-minute (the threshold policy) "
            "or --llm-pred (the gain policy) is required"
        )
    if args.target_rate is not None and not 0.0 <= args.target_rate <= 1.0:
        raise UsageError(f"--target-rate must be within 0..1, not {args.target_rate}")
    if args.unit == "note" and args.target_rate is None:
        raise UsageError("--unit note goes with --target-rate only (F1 and budget targets are per sentence)")
    if args.target_f1 is not None:
        if not 0.0 < args.target_f1 <= 1.0:
            raise UsageError(f"--target-f1 must be within 0..1, not {args.target_f1}")
        if not args.llm_pred:
            raise UsageError("--target-f1 needs --llm-pred: the LLM tier's predictions (JSONL) on the gold notes")
        if args.f1_metric not in F1_KEYS:
            raise UsageError(f"unknown --f1-metric {args.f1_metric!r}; known: {', '.join(F1_KEYS)}")
    if args.llm_pred and not Path(args.llm_pred).is_file():
        raise UsageError(f"LLM predictions file not found: {args.llm_pred}")
    if args.min_gain_per_cost < 0:
        raise UsageError(f"--min-gain-per-cost must not be negative, not {args.min_gain_per_cost}")
    if args.margin_se < 0:
        raise UsageError(f"--margin-se must not be negative, not {args.margin_se}")
    if args.buckets is not None and args.buckets < 1:
        raise UsageError(f"--buckets must be at least 1, not {args.buckets}")
    bad = [m for m in args.gain_metrics.split(",") if m not in METRICS]
    if bad:
        raise UsageError(f"unknown --gain-metrics F1 {bad[0]!r}; known: {', '.join(METRICS)}")
    if args.budget_per_minute is not None:
        if args.budget_per_minute < 0:
            raise UsageError("--budget-per-minute must not be negative")
        if args.notes_per_minute is None or args.notes_per_minute <= 0:
            raise UsageError("--budget-per-minute needs --notes-per-minute N (expected traffic, N > 0)")
    elif args.notes_per_minute is not None:
        raise UsageError("--notes-per-minute goes with --budget-per-minute")
    if Path(args.output).suffix not in (".yaml", ".yml"):
        raise UsageError(f"--output must be a .yaml file (it carries a comment header), not {args.output}")


def _load_base_policies(path: Path) -> tuple[dict[str, Any], Any]:
    """The base policy file as a raw mapping (to rewrite) and as a validated RouterConfig."""
    import yaml

    from router import PolicyConfigError, load_router_config

    try:
        cfg = load_router_config(path)
    except PolicyConfigError as exc:
        raise UsageError(f"--base: {exc}") from exc
    raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    return raw, cfg


def _base_budget(raw: dict[str, Any], budget_per_minute: float | None) -> dict[str, float]:
    """The budget numbers to keep: the base's default policy's when it is a budget, else its
    first budget policy's, else the built-in fallback's; `budget_per_minute` replaces the rate."""
    policies = raw.get("policies") or {}
    budgets = [v for v in policies.values() if isinstance(v, dict) and v.get("kind") == "budget"]
    chosen = policies.get(raw.get("default_policy", "default"))
    src = chosen if isinstance(chosen, dict) and chosen.get("kind") == "budget" else (budgets or [FALLBACK_BUDGET])[0]
    budget = {"rate_per_minute": src["rate_per_minute"], "burst": src["burst"]}
    if budget_per_minute is not None:
        budget["rate_per_minute"] = budget_per_minute
    return budget


def calibrated_policies(
    base: dict[str, Any],
    signal: str,
    threshold: float,
    scope: str,
    budget_per_minute: float | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The base policy mapping with `calibrated` (the threshold) and `default` (a budget wrapping
    it) put in, `default` made the default policy. The budget keeps the base's numbers (its
    default policy's when that is a budget, else its first budget policy's, else the built-in
    fallback's); `budget_per_minute` replaces the refill rate. Returns (mapping, budget numbers)."""
    raw = dict(base)
    policies = {k: dict(v) if isinstance(v, dict) else v for k, v in (raw.get("policies") or {}).items()}
    budget = _base_budget(raw, budget_per_minute)
    policies["calibrated"] = {"kind": "threshold", "signal": signal, "threshold": float(threshold), "scope": scope}
    policies["default"] = {"kind": "budget", "inner": "calibrated", **budget}
    raw["policies"] = policies
    raw["default_policy"] = "default"
    return raw, budget


def gain_policies(
    base: dict[str, Any],
    gain_spec: dict[str, Any],
    calibrated_for: dict[str, str],
    budget_per_minute: float | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The base policy mapping with `gain` (the measured table), `default` (a budget wrapping it)
    as the default policy, and `calibrated_for` (the models the table was measured on); the
    base's other policies (`calibrated` among them) stay. Returns (mapping, budget numbers)."""
    raw = dict(base)
    policies = {k: dict(v) if isinstance(v, dict) else v for k, v in (raw.get("policies") or {}).items()}
    budget = _base_budget(raw, budget_per_minute)
    policies["gain"] = gain_spec
    policies["default"] = {"kind": "budget", "inner": "gain", **budget}
    raw["policies"] = policies
    raw["default_policy"] = "default"
    raw["calibrated_for"] = dict(calibrated_for)
    return raw, budget


def _read_llm_results(path: Path, names: set[str]) -> tuple[dict[str, Any], int]:
    """LLM predictions (NoteResult JSONL) of the named notes; returns (results, lines unusable)."""
    from pydantic import ValidationError

    from clinie.schema import NoteResult

    preds, skipped = load_predictions(path)
    out: dict[str, Any] = {}
    for name, obj in preds.items():
        if name not in names:
            continue
        try:
            out[name] = NoteResult.model_validate(obj)
        except ValidationError:
            skipped += 1
    return out, skipped


def _llm_model_id(results: dict[str, Any], explicit: str | None) -> str:
    """The LLM model the predictions came from: `--llm-model-id`, else their `models.llm`."""
    if explicit:
        return explicit
    ids = {r.models.get("llm") for r in results.values()} - {None, ""}
    if len(ids) != 1:
        found = ", ".join(sorted(ids)) or "none"
        raise UsageError(f"the LLM predictions name {found} as models.llm: give the model with --llm-model-id")
    return ids.pop()


def _shown(path: str | Path) -> str:
    """A path as a policy file's header shows it: relative to the working directory when under it, else
    with the home folder as `~` (the header travels with the file; the machine's layout should not)."""
    p = Path(path).resolve()
    for base, label in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        try:
            return label + str(p.relative_to(base))
        except ValueError:
            continue
    return str(p)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Choose the threshold of a policy and/or measure the gain table on a labelled set, and
    write the policy file."""
    import numpy as np
    import yaml

    from clinie.brat import read_corpus
    from clinie.ood import OOD_FILE, OODStats
    from deployments.fast_tier.config import EngineConfig
    from deployments.fast_tier.default import resolve_model_dir
    from deployments.fast_tier.engine import FastTierEngine, InputError, fast_route, validate_text
    from router import PolicyConfigError, compute_signals, load_router_config
    from router.calibrate import (
        fit_gain_table,
        flagged_fraction,
        gain_policy_spec,
        rate_for_budget,
        rate_for_f1,
        signal_values,
        threshold_for_rate,
    )
    from router.config import CalibratedFor
    from router.signals import SIGNALS

    _check_calibrate_args(args)
    base_path = Path(args.base) if args.base else DEFAULT_POLICY_FILE
    base_raw, base_cfg = _load_base_policies(base_path)
    try:
        gold = read_corpus(args.gold)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    docs = []
    for d in gold:
        try:
            validate_text(d.text, EngineConfig.model_fields["max_note_chars"].default)
            docs.append(d)
        except InputError as exc:
            print(f"clinie: skipping note {d.name}: {exc.code}", file=sys.stderr)
    if not docs:
        raise UsageError(f"no usable notes in {args.gold}")
    llm_results: dict[str, Any] = {}
    llm_id = ""
    if args.llm_pred:
        llm_results, skipped = _read_llm_results(Path(args.llm_pred), {d.name for d in docs})
        if not llm_results:
            raise UsageError(f"{args.llm_pred} holds no usable LLM prediction for the notes in {args.gold}")
        llm_id = _llm_model_id(llm_results, args.llm_model_id)
        missing = len(docs) - len(llm_results)
        if missing or skipped:
            print(
                f"clinie: {missing} gold notes without an LLM prediction (they keep the fast answer), "
                f"{skipped} prediction lines unusable",
                file=sys.stderr,
            )

    model_dir = resolve_model_dir(args.model)
    engine = FastTierEngine(EngineConfig(model_dir=model_dir))
    if llm_id:
        try:  # refuse a malformed id before the minutes of the fast pass
            CalibratedFor(fast=engine.model_tag, llm=llm_id)
        except ValueError as exc:
            raise UsageError(f"calibrated_for: {exc}") from exc
    analyses = engine.analyze([(d.name, d.text) for d in docs], progress=True)
    ood_file = model_dir / OOD_FILE
    ood = OODStats.load_if_present(ood_file)
    signals = [compute_signals(a, ood) for a in analyses]
    if any(args.signal not in s.per_sentence for s in signals):
        raise UsageError(f"signal {args.signal!r} is not available from the model at {model_dir}")
    n_sentences = sum(len(s.sentences) for s in signals)
    by_name = {d.name: s for d, s in zip(docs, signals, strict=True)}
    fast_results = {d.name: engine.to_result(a, fast_route(a)) for d, a in zip(docs, analyses, strict=True)}
    set_desc = f"{_shown(args.gold)} ({len(docs)} notes, {n_sentences} sentences)"
    header = [
        "Router policies written by `clinie calibrate` (schema: router/config.py).",
        f"Calibrated on: {set_desc},",
        f"  fast tier {engine.model_tag} at {_shown(model_dir)}.",
    ]
    summary: dict[str, Any] = {"output": str(args.output), "notes": len(docs), "sentences": n_sentences}
    raw = base_raw

    unit, scope = args.unit, args.unit
    rate: float | None = None
    if args.target_rate is not None:
        rate = args.target_rate
        target = f"escalation rate {rate:.3f} of {unit}s"
    elif args.budget_per_minute is not None:
        costs = base_cfg.costs
        chars = [c for s in signals for c in s.sentence_chars]
        per_sentence = costs.llm_tokens(chars) / max(len(chars), 1) * costs.llm_cost_per_token
        if per_sentence <= 0:
            raise UsageError("the base policy file's cost model makes escalation free: no budget to calibrate for")
        rate = rate_for_budget(signals, args.budget_per_minute, args.notes_per_minute, per_sentence)
        target = (
            f"budget {args.budget_per_minute:g} cost units/min at {args.notes_per_minute:g} notes/min "
            f"(about {per_sentence:.0f} per escalated sentence on this set) -> sentence rate {rate:.3f}"
        )
    elif args.target_f1 is not None:
        from router.simulate import quality_curve

        curve = quality_curve(
            docs,
            fast_results,
            llm_results,
            by_name,
            args.signal,
            rates=[round(0.01 * i, 2) for i in range(101)],
            costs=base_cfg.costs,
        )
        pairs = [(p["rate"], p["f1"][args.f1_metric]) for p in curve["points"]]
        try:
            rate = rate_for_f1(pairs, args.target_f1)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        reached = dict(pairs)[rate]
        target = (
            f"{args.f1_metric} F1 >= {args.target_f1:.3f} (LLM predictions: {args.llm_pred}; "
            f"fast only {curve['fast_only']['f1'][args.f1_metric]:.3f}, LLM only "
            f"{curve['llm_only']['f1'][args.f1_metric]:.3f}) -> sentence rate {rate:.2f} (F1 {reached:.3f})"
        )

    if rate is not None:
        risky = SIGNALS[args.signal].riskier == "higher"
        if unit == "sentence":
            values = signal_values(signals, args.signal, "sentence")
        else:  # a `note`-scope policy escalates a note when any sentence is flagged: its worst sentence
            worst = np.max if risky else np.min
            values = np.array([float(worst(s.per_sentence[args.signal])) for s in signals])
        threshold = threshold_for_rate(values, args.signal, rate)
        realized = flagged_fraction(values, args.signal, threshold)
        # the other unit's view of the same threshold
        flags = [(v > threshold) if risky else (v < threshold) for v in (s.per_sentence[args.signal] for s in signals)]
        if unit == "sentence":
            sent_rate = realized
            note_rate = float(np.mean([f.any() for f in flags]))
        else:
            note_rate = realized
            sent_rate = sum(len(f) for f in flags if f.any()) / n_sentences
        raw, budget = calibrated_policies(raw, args.signal, threshold, scope, args.budget_per_minute)
        header += [
            f"`calibrated`: threshold over {args.signal} ({SIGNALS[args.signal].riskier} is riskier), scope {scope};",
            "  a quantile of the signal on that set (midpoint between the two values around the cut).",
            f"  Target: {target}.",
            f"  Realized on the set: {sent_rate:.4f} of sentences, {note_rate:.4f} of notes escalated.",
        ]
        summary.update(
            {
                "signal": args.signal,
                "scope": scope,
                "threshold": threshold,
                "target": target,
                "realized_sentence_rate": round(sent_rate, 4),
                "realized_note_rate": round(note_rate, 4),
            }
        )

    if args.llm_pred:
        metrics = args.gain_metrics.split(",")
        table = fit_gain_table(
            docs, fast_results, llm_results, by_name, args.signal, metrics=metrics, buckets=args.buckets
        )
        spec = gain_policy_spec(table, args.min_gain_per_cost, args.margin_se)
        data = f"{len(docs)} notes of {Path(args.gold).name}, LLM predictions {Path(args.llm_pred).name}"
        raw, budget = gain_policies(
            raw, spec, {"fast": engine.model_tag, "llm": llm_id, "data": data}, args.budget_per_minute
        )
        acted = [b["gain"] - args.margin_se * b["se"] for b in table["buckets"]]
        best = int(np.argmax(acted))
        verdict = (
            "no bucket gains: `gain` escalates nothing (route.reason llm_not_better)"
            if max(acted) <= 0
            else f"{sum(a > 0 for a in acted)} of {len(acted)} buckets gain"
        )
        header += [
            f"`gain`: per quantile bucket of {args.signal}, the change of F1 (mean of {', '.join(metrics)}) per",
            "  unit share of sentences when the LLM tier answers a sentence instead of the fast tier",
            f"  (router/policies/gain.py). LLM {llm_id} (predictions {_shown(args.llm_pred)}).",
            f"  Best bucket: gain {table['buckets'][best]['gain']:+.4f} (se {table['buckets'][best]['se']:.4f}); "
            f"{verdict}.",
            f"`default` = budget (rate_per_minute {budget['rate_per_minute']:g}, burst {budget['burst']:g}) "
            "wrapping `gain`.",
        ]
        summary.update(
            {
                "gain_signal": args.signal,
                "gain_metrics": metrics,
                "gain_buckets": spec["buckets"],
                "gain_verdict": verdict,
                "calibrated_for": raw["calibrated_for"],
                "fast_f1": table["fast_f1"],
                "escalating_gaining_buckets_f1_in_sample": table["gaining_f1"],
                "llm_missing": table["llm_missing"],
            }
        )
    elif rate is not None:
        header.append(
            f"`default` = budget (rate_per_minute {budget['rate_per_minute']:g}, burst {budget['burst']:g}) "
            "wrapping `calibrated` (no --llm-pred: escalates by uncertainty, not by a measured gain)."
        )
    header.append(f"Base: {_shown(base_path)}.")

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(raw, sort_keys=False, default_flow_style=False)
    out.write_text("".join(f"# {line}\n" for line in header) + body, encoding="utf-8")
    try:
        load_router_config(out)
    except PolicyConfigError as exc:
        print(f"clinie: error: the written policy file does not validate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(summary, indent=2))
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
        cfg, raw = local.local_app_config(
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
    svc = local.start(cfg, raw, host=args.host, port=args.port, grpc_port=args.grpc_port, num_cpus=args.num_cpus)
    ready = local.wait_ready(svc.http_url, timeout_s=300)
    print(
        f"clinie: serving HTTP on {svc.http_url} (docs: {svc.http_url}/docs), gRPC on {svc.grpc_target}; "
        f"ready {svc.started_s + ready:.1f} s after start. Ctrl-C stops.",
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
