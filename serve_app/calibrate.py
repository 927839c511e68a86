"""Calibrating the router on labelled notes: the workflow behind `clinie calibrate`.

`calibrate(CalibrateOptions(...))` runs the fast tier on gold notes, computes the router's
signals, and writes a policy file: with a target (an escalation rate, an F1, or a budget), a
`calibrated` threshold policy that meets it on that set; with the LLM tier's predictions on the
same notes, a `gain` policy holding the measured gain per signal bucket, made the default and
recorded with the models it was measured on (`calibrated_for`). It returns the summary the CLI
prints. It sits in the application layer because it drives both the fast tier and the router.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from clinie.brat import Document, read_corpus
from clinie.errors import InputError
from clinie.ood import OOD_FILE, OODStats
from clinie.paths import DEFAULT_POLICIES
from clinie.predictions import load_predictions
from clinie.schema import NoteResult
from clinie.validation import validate_text
from router import NoteSignals, PolicyConfigError, RouterConfig, compute_signals, load_router_config
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
from router.policies.gain import METRICS
from router.signals import SIGNALS
from router.simulate import F1_KEYS

log = logging.getLogger("clinie.calibrate")

FALLBACK_BUDGET = {"rate_per_minute": 600_000, "burst": 100_000}  # as router.config.fallback_config


class CalibrationError(ValueError):
    """Options or inputs the calibration cannot work with (the CLI exits with status 2)."""


class CalibrateOptions(BaseModel):
    """What to calibrate, on what (the flags of `clinie calibrate`, one for one)."""

    model_config = ConfigDict(extra="forbid")

    gold: Path = Field(description="brat folder of labelled notes (NAME.txt + NAME.ann).")
    output: Path = Field(description="Policy file (.yaml) to write.")
    model: Path | None = Field(default=None, description="Fast-tier model; None: $CLINIE_MODEL_DIR or the default.")
    signal: str = Field(default="min_token_prob", description="Sentence signal to threshold and bucket.")
    target_rate: float | None = Field(default=None, description="Fraction of sentences (or notes) to escalate.")
    target_f1: float | None = Field(default=None, description="F1 to reach at the lowest rate (needs llm_pred).")
    budget_per_minute: float | None = Field(default=None, description="LLM cost units per minute.")
    notes_per_minute: float | None = Field(default=None, description="Expected traffic, with budget_per_minute.")
    unit: Literal["sentence", "note"] = Field(default="sentence", description="What target_rate counts.")
    llm_pred: Path | None = Field(default=None, description="The LLM tier's predictions (JSONL) on the gold notes.")
    llm_model_id: str | None = Field(default=None, description="LLM id of the predictions (default: models.llm).")
    min_gain_per_cost: float = Field(default=0.0, description="Least gain per cost unit the gain policy buys.")
    margin_se: float = Field(default=1.0, description="The gain policy acts on gain minus this many std errors.")
    gain_metrics: str = Field(
        default="relaxed_entities,relaxed_modifiers,relaxed_relations",
        description="F1s whose mean the gain measures, comma-separated.",
    )
    buckets: int | None = Field(default=None, description="Quantile buckets of the gain table (None: automatic).")
    f1_metric: str = Field(default="relaxed_entities", description="Which F1 target_f1 is about.")
    base: Path | None = Field(default=None, description="Policy file to start from (default: the shipped one).")


# -- checks ---------------------------------------------------------------------------------------


def check_options(o: CalibrateOptions) -> None:
    """Everything about the options that can be refused before any model is loaded."""
    known = sorted(k for k, s in SIGNALS.items() if s.scope == "sentence")
    if o.signal not in known:
        extra = " (a note-level signal: use the threshold policy's ood_threshold)" if o.signal in SIGNALS else ""
        raise CalibrationError(f"unknown signal {o.signal!r}{extra}; known sentence signals: {', '.join(known)}")
    if all(t is None for t in (o.target_rate, o.target_f1, o.budget_per_minute)) and not o.llm_pred:
        raise CalibrationError(
            "one of --target-rate, --target-f1, --budget-per-minute (the threshold policy) "
            "or --llm-pred (the gain policy) is required"
        )
    if o.target_rate is not None and not 0.0 <= o.target_rate <= 1.0:
        raise CalibrationError(f"--target-rate must be within 0..1, not {o.target_rate}")
    if o.unit == "note" and o.target_rate is None:
        raise CalibrationError("--unit note goes with --target-rate only (F1 and budget targets are per sentence)")
    _check_f1_target(o)
    if o.llm_pred and not o.llm_pred.is_file():
        raise CalibrationError(f"LLM predictions file not found: {o.llm_pred}")
    _check_gain_options(o)
    _check_budget(o)
    if o.output.suffix not in (".yaml", ".yml"):
        raise CalibrationError(f"--output must be a .yaml file (it carries a comment header), not {o.output}")


def _check_f1_target(o: CalibrateOptions) -> None:
    if o.target_f1 is None:
        return
    if not 0.0 < o.target_f1 <= 1.0:
        raise CalibrationError(f"--target-f1 must be within 0..1, not {o.target_f1}")
    if not o.llm_pred:
        raise CalibrationError("--target-f1 needs --llm-pred: the LLM tier's predictions (JSONL) on the gold notes")
    if o.f1_metric not in F1_KEYS:
        raise CalibrationError(f"unknown --f1-metric {o.f1_metric!r}; known: {', '.join(F1_KEYS)}")


def _check_gain_options(o: CalibrateOptions) -> None:
    if o.min_gain_per_cost < 0:
        raise CalibrationError(f"--min-gain-per-cost must not be negative, not {o.min_gain_per_cost}")
    if o.margin_se < 0:
        raise CalibrationError(f"--margin-se must not be negative, not {o.margin_se}")
    if o.buckets is not None and o.buckets < 1:
        raise CalibrationError(f"--buckets must be at least 1, not {o.buckets}")
    bad = [m for m in o.gain_metrics.split(",") if m not in METRICS]
    if bad:
        raise CalibrationError(f"unknown --gain-metrics F1 {bad[0]!r}; known: {', '.join(METRICS)}")


def _check_budget(o: CalibrateOptions) -> None:
    if o.budget_per_minute is not None:
        if o.budget_per_minute < 0:
            raise CalibrationError("--budget-per-minute must not be negative")
        if o.notes_per_minute is None or o.notes_per_minute <= 0:
            raise CalibrationError("--budget-per-minute needs --notes-per-minute N (expected traffic, N > 0)")
    elif o.notes_per_minute is not None:
        raise CalibrationError("--notes-per-minute goes with --budget-per-minute")


# -- policy-file rewriting ------------------------------------------------------------------------


def load_base_policies(path: Path) -> tuple[dict[str, Any], RouterConfig]:
    """The base policy file as a raw mapping (to rewrite) and as a validated RouterConfig."""
    try:
        cfg = load_router_config(path)
    except PolicyConfigError as exc:
        raise CalibrationError(f"--base: {exc}") from exc
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


def shown(path: str | Path) -> str:
    """A path as a policy file's header shows it: relative to the working directory when under it, else
    with the home folder as `~` (the header travels with the file; the machine's layout should not)."""
    p = Path(path).resolve()
    for base, label in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        try:
            return label + str(p.relative_to(base))
        except ValueError:
            continue
    return str(p)


# -- inputs ---------------------------------------------------------------------------------------


def _gold_notes(gold: Path) -> list[Document]:
    """The gold notes the fast tier accepts (the others are skipped, by name and reason)."""
    from deployments.fast_tier.config import EngineConfig

    try:
        docs = read_corpus(gold)
    except FileNotFoundError as exc:
        raise CalibrationError(str(exc)) from exc
    usable = []
    for d in docs:
        try:
            validate_text(d.text, EngineConfig.model_fields["max_note_chars"].default)
            usable.append(d)
        except InputError as exc:
            log.warning("skipping note %s: %s", d.name, exc.code)
    if not usable:
        raise CalibrationError(f"no usable notes in {gold}")
    return usable


def read_llm_results(path: Path, names: set[str]) -> tuple[dict[str, NoteResult], int]:
    """LLM predictions (NoteResult JSONL) of the named notes; returns (results, lines unusable)."""
    from pydantic import ValidationError

    preds, skipped = load_predictions(path)
    out: dict[str, NoteResult] = {}
    for name, obj in preds.items():
        if name not in names:
            continue
        try:
            out[name] = NoteResult.model_validate(obj)
        except ValidationError:
            skipped += 1
    return out, skipped


def llm_model_id(results: dict[str, NoteResult], explicit: str | None) -> str:
    """The LLM model the predictions came from: `explicit`, else their `models.llm`."""
    if explicit:
        return explicit
    ids = {r.models.get("llm") for r in results.values()} - {None, ""}
    if len(ids) != 1:
        found = ", ".join(sorted(i for i in ids if i)) or "none"
        raise CalibrationError(f"the LLM predictions name {found} as models.llm: give the model with --llm-model-id")
    return str(ids.pop())


def _llm_predictions(o: CalibrateOptions, docs: list[Document]) -> tuple[dict[str, NoteResult], str]:
    if not o.llm_pred:
        return {}, ""
    results, skipped = read_llm_results(o.llm_pred, {d.name for d in docs})
    if not results:
        raise CalibrationError(f"{o.llm_pred} holds no usable LLM prediction for the notes in {o.gold}")
    model_id = llm_model_id(results, o.llm_model_id)
    missing = len(docs) - len(results)
    if missing or skipped:
        log.warning(
            "%d gold notes without an LLM prediction (they keep the fast answer), %d prediction lines unusable",
            missing,
            skipped,
        )
    return results, model_id


# -- the run --------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the sections of a calibration share: the notes, the fast tier's view of them, and
    the policy file being written (its mapping, header lines and summary)."""

    opts: CalibrateOptions
    docs: list[Document]
    signals: list[NoteSignals]
    fast_results: dict[str, NoteResult]
    llm_results: dict[str, NoteResult]
    llm_id: str
    fast_tag: str
    base_cfg: RouterConfig
    raw: dict[str, Any]
    header: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)

    @property
    def by_name(self) -> dict[str, NoteSignals]:
        return {d.name: s for d, s in zip(self.docs, self.signals, strict=True)}

    @property
    def sentences(self) -> int:
        return sum(len(s.sentences) for s in self.signals)


def _fast_pass(o: CalibrateOptions, docs: list[Document], llm_id: str) -> tuple[Any, Path, list[Any]]:
    """The fast tier's engine, its model folder and its analyses of the gold notes."""
    from deployments.fast_tier.config import EngineConfig
    from deployments.fast_tier.default import resolve_model_dir
    from deployments.fast_tier.engine import FastTierEngine

    model_dir = resolve_model_dir(o.model)
    _check_not_trained_on(model_dir, docs)
    engine = FastTierEngine(EngineConfig(model_dir=model_dir))
    if llm_id:
        try:  # refuse a malformed id before the minutes of the fast pass
            CalibratedFor(fast=engine.model_tag, llm=llm_id)
        except ValueError as exc:
            raise CalibrationError(f"calibrated_for: {exc}") from exc
    return engine, model_dir, engine.analyze([(d.name, d.text) for d in docs], progress=True)


def _check_not_trained_on(model_dir: Path, docs: list[Document]) -> None:
    """Refuse gold notes the fast tier trained on (its model card lists them): its answers there
    are better than on unseen notes, so uncertainty thresholds and the LLM tier's measured gain
    would both be set for a fast tier that does not exist. The embedded default trained on every
    shared annotated note; its held-out model (`clinie build-default --held-out`) did not see the
    dev notes."""
    card = model_dir / "model_card.json"
    if not card.is_file():
        return
    trained = set(json.loads(card.read_text()).get("data", {}).get("train_notes", []))
    seen = sorted(d.name for d in docs if d.name in trained)
    if seen:
        raise CalibrationError(
            f"the fast tier at {shown(model_dir)} trained on {len(seen)} of the {len(docs)} gold notes "
            f"(e.g. {seen[0]}): calibrate on notes it never saw, or pass --model a model that did not train "
            "on them (the embedded default's held-out model: clinie build-default --held-out)"
        )


def _start(o: CalibrateOptions) -> _Run:
    from deployments.fast_tier.engine import fast_route

    base_raw, base_cfg = load_base_policies(o.base or DEFAULT_POLICIES)
    docs = _gold_notes(o.gold)
    llm_results, llm_id = _llm_predictions(o, docs)
    engine, model_dir, analyses = _fast_pass(o, docs, llm_id)
    ood = OODStats.load_if_present(model_dir / OOD_FILE)
    signals = [compute_signals(a, ood) for a in analyses]
    if any(o.signal not in s.per_sentence for s in signals):
        raise CalibrationError(f"signal {o.signal!r} is not available from the model at {model_dir}")
    run = _Run(
        opts=o,
        docs=docs,
        signals=signals,
        fast_results={d.name: engine.to_result(a, fast_route()) for d, a in zip(docs, analyses, strict=True)},
        llm_results=llm_results,
        llm_id=llm_id,
        fast_tag=engine.model_tag,
        base_cfg=base_cfg,
        raw=base_raw,
    )
    run.header = [
        "Router policies written by `clinie calibrate` (schema: router/config.py).",
        f"Calibrated on: {shown(o.gold)} ({len(docs)} notes, {run.sentences} sentences),",
        f"  fast tier {engine.model_tag} at {shown(model_dir)}.",
    ]
    run.summary = {"output": str(o.output), "notes": len(docs), "sentences": run.sentences}
    return run


def _rate_for_budget(run: _Run) -> tuple[float, str]:
    o, costs = run.opts, run.base_cfg.costs
    assert o.budget_per_minute is not None and o.notes_per_minute is not None  # checked
    chars = [c for s in run.signals for c in s.sentence_chars]
    per_sentence = costs.llm_tokens(chars) / max(len(chars), 1) * costs.llm_cost_per_token
    if per_sentence <= 0:
        raise CalibrationError("the base policy file's cost model makes escalation free: no budget to calibrate for")
    rate = rate_for_budget(run.signals, o.budget_per_minute, o.notes_per_minute, per_sentence)
    target = (
        f"budget {o.budget_per_minute:g} cost units/min at {o.notes_per_minute:g} notes/min "
        f"(about {per_sentence:.0f} per escalated sentence on this set) -> sentence rate {rate:.3f}"
    )
    return rate, target


def _rate_for_f1(run: _Run) -> tuple[float, str]:
    from router.simulate import quality_curve

    o = run.opts
    assert o.target_f1 is not None  # checked
    rates = [round(0.01 * i, 2) for i in range(101)]
    curve = quality_curve(
        run.docs, run.fast_results, run.llm_results, run.by_name, o.signal, rates=rates, costs=run.base_cfg.costs
    )
    pairs = [(p["rate"], p["f1"][o.f1_metric]) for p in curve["points"]]
    try:
        rate = rate_for_f1(pairs, o.target_f1)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from exc
    target = (
        f"{o.f1_metric} F1 >= {o.target_f1:.3f} (LLM predictions: {o.llm_pred}; "
        f"fast only {curve['fast_only']['f1'][o.f1_metric]:.3f}, LLM only "
        f"{curve['llm_only']['f1'][o.f1_metric]:.3f}) -> sentence rate {rate:.2f} (F1 {dict(pairs)[rate]:.3f})"
    )
    return rate, target


def _target(run: _Run) -> tuple[float, str] | None:
    """The escalation rate the target asks for, and the target in words (None: no target)."""
    o = run.opts
    if o.target_rate is not None:
        return o.target_rate, f"escalation rate {o.target_rate:.3f} of {o.unit}s"
    if o.budget_per_minute is not None:
        return _rate_for_budget(run)
    if o.target_f1 is not None:
        return _rate_for_f1(run)
    return None


def _realized(run: _Run, rate: float) -> tuple[float, float, float]:
    """The threshold that escalates `rate` of the target's unit, and the sentence and note rates
    it realizes on the set."""
    o, signals = run.opts, run.signals
    risky = SIGNALS[o.signal].riskier == "higher"
    if o.unit == "sentence":
        values = signal_values(signals, o.signal, "sentence")
    else:  # a `note`-scope policy escalates a note when any sentence is flagged: its worst sentence
        worst = np.max if risky else np.min
        values = np.array([float(worst(s.per_sentence[o.signal])) for s in signals])
    threshold = threshold_for_rate(values, o.signal, rate)
    realized = flagged_fraction(values, o.signal, threshold)
    # the other unit's view of the same threshold
    flags = [(v > threshold) if risky else (v < threshold) for v in (s.per_sentence[o.signal] for s in signals)]
    if o.unit == "sentence":
        return threshold, realized, float(np.mean([f.any() for f in flags]))
    return threshold, sum(len(f) for f in flags if f.any()) / run.sentences, realized


def _threshold_section(run: _Run, rate: float, target: str) -> None:
    """The `calibrated` threshold policy that meets the target on the set."""
    o = run.opts
    threshold, sent_rate, note_rate = _realized(run, rate)
    run.raw, run.budget = calibrated_policies(run.raw, o.signal, threshold, o.unit, o.budget_per_minute)
    run.header += [
        f"`calibrated`: threshold over {o.signal} ({SIGNALS[o.signal].riskier} is riskier), scope {o.unit};",
        "  a quantile of the signal on that set (midpoint between the two values around the cut).",
        f"  Target: {target}.",
        f"  Realized on the set: {sent_rate:.4f} of sentences, {note_rate:.4f} of notes escalated.",
    ]
    run.summary.update(
        {
            "signal": o.signal,
            "scope": o.unit,
            "threshold": threshold,
            "target": target,
            "realized_sentence_rate": round(sent_rate, 4),
            "realized_note_rate": round(note_rate, 4),
        }
    )


def _gain_section(run: _Run) -> None:
    """The `gain` policy: the measured gain of the LLM tier's answers per signal bucket."""
    o = run.opts
    assert o.llm_pred is not None  # only called with predictions
    metrics = o.gain_metrics.split(",")
    table = fit_gain_table(
        run.docs, run.fast_results, run.llm_results, run.by_name, o.signal, metrics=metrics, buckets=o.buckets
    )
    spec = gain_policy_spec(table, o.min_gain_per_cost, o.margin_se)
    data = f"{len(run.docs)} notes of {o.gold.name}, LLM predictions {o.llm_pred.name}"
    ids = {"fast": run.fast_tag, "llm": run.llm_id, "data": data}
    run.raw, run.budget = gain_policies(run.raw, spec, ids, o.budget_per_minute)
    acted = [b["gain"] - o.margin_se * b["se"] for b in table["buckets"]]
    best = table["buckets"][int(np.argmax(acted))]
    verdict = (
        "no bucket gains: `gain` escalates nothing (route.reason llm_not_better)"
        if max(acted) <= 0
        else f"{sum(a > 0 for a in acted)} of {len(acted)} buckets gain"
    )
    run.header += [
        f"`gain`: per quantile bucket of {o.signal}, the change of F1 (mean of {', '.join(metrics)}) per",
        "  unit share of sentences when the LLM tier answers a sentence instead of the fast tier",
        f"  (router/policies/gain.py). LLM {run.llm_id} (predictions {shown(o.llm_pred)}).",
        f"  Best bucket: gain {best['gain']:+.4f} (se {best['se']:.4f}); {verdict}.",
        f"`default` = budget (rate_per_minute {run.budget['rate_per_minute']:g}, burst {run.budget['burst']:g}) "
        "wrapping `gain`.",
    ]
    run.summary.update(
        {
            "gain_signal": o.signal,
            "gain_metrics": metrics,
            "gain_buckets": spec["buckets"],
            "gain_verdict": verdict,
            "calibrated_for": run.raw["calibrated_for"],
            "fast_f1": table["fast_f1"],
            "escalating_gaining_buckets_f1_in_sample": table["gaining_f1"],
            "llm_missing": table["llm_missing"],
        }
    )


def calibrate(o: CalibrateOptions) -> dict[str, Any]:
    """Calibrate, write the policy file (`o.output`) and return the summary.

    Raises CalibrationError for unusable options or inputs (before any model work where it can),
    and PolicyConfigError when the written file does not validate (it is left for inspection).
    """
    check_options(o)
    run = _start(o)
    chosen = _target(run)
    if chosen is not None:
        _threshold_section(run, *chosen)
    if o.llm_pred:
        _gain_section(run)
    elif chosen is not None:
        run.header.append(
            f"`default` = budget (rate_per_minute {run.budget['rate_per_minute']:g}, burst {run.budget['burst']:g}) "
            "wrapping `calibrated` (no --llm-pred: escalates by uncertainty, not by a measured gain)."
        )
    run.header.append(f"Base: {shown(o.base or DEFAULT_POLICIES)}.")
    o.output.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(run.raw, sort_keys=False, default_flow_style=False)
    o.output.write_text("".join(f"# {line}\n" for line in run.header) + body, encoding="utf-8")
    load_router_config(o.output)  # what was written must be a policy file the service accepts
    return run.summary
