"""Router evaluation on the model card's dev notes, in one run.

(a) Selective prediction of the fast tier: per signal, the risk-coverage curve over sentences
    (an error = the fast result differs from gold in that sentence, `router.simulate.sentence_errors`),
    AURC against a random ranking, and the share of errors among the riskiest 20%. The note-level
    signals (the OOD score, each sentence signal's worst sentence) are ranked over notes.
(b) Routing overhead: `compute_signals` + `Router.decide` (checked-in policies) per note, p50/p95.
(c) Quality vs cost of the routed system with the best signal (lowest sentence AURC): F1 against
    the fraction of sentences escalated and against estimated LLM cost, fast-only and llm-only end
    points, a random-escalation baseline, APGR and CPT(50%) (`router.simulate.quality_curve`). The
    LLM tier's dev predictions come from `--llm-pred`, or from one in-process llm-only run (several
    minutes on CPU) saved to `<output-dir>/llm_dev_predictions.jsonl` for reuse with `--llm-pred`.
(d) OOD probe: `ood_mahalanobis` of in-distribution notes (the dev notes and unlabelled notes of the
    same source as the training notes) against real non-clinical English text available offline
    (package READMEs and licence texts shipped inside the installed Python packages).
(e) Quality vs cost, the headline: the shipped `default` policy and `calibrated`, each run in process
    on the dev notes with the embedded LLM tier (`Pipeline.run`, the real engine on escalations):
    F1 strict and relaxed, share of sentences and notes escalated, estimated LLM tokens, wall time
    per note; `fast-only` and `llm-only` for reference. The shipped gain table was fitted on these
    same notes, so `default` is also run cross-fitted: the dev notes in two halves, each routed by a
    gain table fitted on the other half only (the honest held-out number). Counterfactual rows route
    with the gold annotations as the LLM's answers (simulated; an upper bound).

    python -m benchmarks.router_eval [--model DIR] [--notes 20] [--llm-pred FILE] [--output-dir benchmarks/results]

Writes `router_eval.json`, `risk_coverage.png`, `quality_vs_rate.png`, `quality_vs_cost.png`,
`gain_table.png` and `headline.png`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fast_tier import dev_documents
from benchmarks.report import write_report
from clinie.analysis import analysis_to_result
from clinie.brat import Document, document_from_result
from clinie.ood import OOD_FILE, OODStats
from clinie.paths import DEFAULT_POLICIES, REPO_ROOT
from clinie.schema import NoteError, NoteResult
from clinie.scoring import score_documents
from clinie.validation import validate_text
from deployments.fast_tier.config import EngineConfig
from deployments.fast_tier.default import resolve_model_dir
from deployments.fast_tier.engine import FastTierEngine, fast_route
from router import SIGNALS, NoteSignals, Router, RouterConfig, compute_signals, load_router_config
from router.calibrate import fit_gain_table, gain_policy_spec
from router.simulate import (
    HEADLINE,
    errors_captured_at,
    f1_summary,
    quality_curve,
    risk_coverage,
    sentence_errors,
    simulate,
)

POLICIES = DEFAULT_POLICIES  # --policies replaces it
UNLABELLED = REPO_ROOT.parent / "shared" / "data" / "mtsamples-unlabeled" / "notes.jsonl"
TARGET_RATE = 0.2


# -- helpers ---------------------------------------------------------------------------------------


def _thin(xs: list[float], ys: list[float], points: int = 101) -> dict[str, list[float]]:
    """A curve with at most `points` points, for the JSON report (AURC uses every point)."""
    idx = np.unique(np.linspace(0, len(xs) - 1, min(points, len(xs))).round().astype(int))
    return {"coverage": [round(xs[i], 4) for i in idx], "selective_risk": [round(ys[i], 4) for i in idx]}


def _summary(rc: dict[str, Any]) -> dict[str, Any]:
    return {
        "n": rc["n"],
        "errors": rc["errors"],
        "aurc": round(rc["aurc"], 4),
        "random_aurc": round(rc["random_aurc"], 4),
        "oracle_aurc": round(rc["oracle_aurc"], 4),
        "aurc_reduction_vs_random": round(rc["aurc_reduction"], 4),
        "errors_captured": {k: round(v, 4) for k, v in rc["errors_captured"].items()},
        "oracle_errors_captured": {k: round(v, 4) for k, v in rc["oracle_errors_captured"].items()},
        "curve": _thin(rc["coverage"], rc["selective_risk"]),
    }


def auroc(positive: list[float], negative: list[float]) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    p, n = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values)
    return {
        "n": int(v.size),
        "mean": round(float(v.mean()), 4),
        "median": round(float(np.median(v)), 4),
        "min": round(float(v.min()), 4),
        "max": round(float(v.max()), 4),
    }


# -- (a) selective prediction ----------------------------------------------------------------------


def selective_prediction(
    signals: dict[str, NoteSignals],
    errors: dict[str, np.ndarray],
    relaxed_errors: dict[str, np.ndarray],
    seed: int = 0,
) -> dict[str, Any]:
    names = list(signals)
    err = np.concatenate([errors[n] for n in names])
    err_relaxed = np.concatenate([relaxed_errors[n] for n in names])
    sentence: dict[str, Any] = {}
    relaxed: dict[str, Any] = {}
    for name, spec in SIGNALS.items():
        if spec.scope != "sentence" or any(name not in signals[n].per_sentence for n in names):
            continue
        risk = np.concatenate([signals[n].sentence_risk(name) for n in names])
        sentence[name] = _summary(risk_coverage(risk, err, rates=(0.1, TARGET_RATE, 0.3, 0.5)))
        rr = _summary(risk_coverage(risk, err_relaxed, rates=(0.1, TARGET_RATE, 0.3, 0.5)))
        relaxed[name] = {k: v for k, v in rr.items() if k != "curve"}
    rng = np.random.default_rng(seed)
    random_aurcs = [risk_coverage(rng.random(len(err)), err)["aurc"] for _ in range(200)]
    random_captured = [errors_captured_at(rng.random(len(err)), err, TARGET_RATE) for _ in range(200)]
    chars = np.concatenate([np.asarray(signals[n].sentence_chars, float) for n in names])
    baseline = _summary(risk_coverage(chars, err, rates=(0.1, TARGET_RATE, 0.3, 0.5)))

    # notes: loss = the note's fraction of sentences in error; also "any error" (binary)
    loss = np.array([errors[n].mean() for n in names])
    anyerr = np.array([errors[n].any() for n in names], dtype=float)
    note: dict[str, Any] = {}
    for name in sorted({k for n in names for k in signals[n].note}):
        if any(name not in signals[n].note for n in names):
            continue
        sign = 1.0 if SIGNALS[name].riskier == "higher" else -1.0
        risk = np.array([sign * signals[n].note[name] for n in names])
        rc = risk_coverage(risk, loss, rates=(TARGET_RATE, 0.5))
        note[name] = {
            "scope": SIGNALS[name].scope,
            "aurc": round(rc["aurc"], 4),
            "random_aurc": round(rc["random_aurc"], 4),
            "aurc_reduction_vs_random": round(rc["aurc_reduction"], 4),
            "errors_captured": {k: round(v, 4) for k, v in rc["errors_captured"].items()},
            "any_error_aurc": round(risk_coverage(risk, anyerr)["aurc"], 4),
        }
    return {
        "error_definition": "a sentence is in error when the fast tier's result differs from gold there "
        "(strict: a span or relation, placed at its start / its entity's start, unmatched on either side)",
        "sentences": len(err),
        "sentence_errors": int(err.sum()),
        "sentence_error_rate": round(float(err.mean()), 4),
        "sentence_signals": sentence,
        "random_ranking_empirical": {
            "seeds": 200,
            "aurc_mean": round(float(np.mean(random_aurcs)), 4),
            "aurc_sd": round(float(np.std(random_aurcs)), 4),
            f"errors_captured_at_{TARGET_RATE:g}_mean": round(float(np.mean(random_captured)), 4),
        },
        "baseline_sentence_length": baseline,
        "relaxed_errors": {
            "definition": "the same with the relaxed scorer's matching (same type, overlapping span)",
            "sentence_errors": int(err_relaxed.sum()),
            "sentence_error_rate": round(float(err_relaxed.mean()), 4),
            "sentence_signals": relaxed,
        },
        "notes": len(names),
        "note_loss": "fraction of the note's sentences in error (any_error_aurc: loss = any error in the note)",
        "note_any_error_rate": round(float(anyerr.mean()), 4),
        "note_signals": note,
    }


def plot_risk_coverage(sel: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, s in sorted(sel["sentence_signals"].items(), key=lambda kv: kv[1]["aurc"]):
        ax.plot(s["curve"]["coverage"], s["curve"]["selective_risk"], label=f"{name} (AURC {s['aurc']:.3f})")
    b = sel["baseline_sentence_length"]
    ax.plot(b["curve"]["coverage"], b["curve"]["selective_risk"], "k:", label=f"sentence length (AURC {b['aurc']:.3f})")
    rate = sel["sentence_error_rate"]
    ax.axhline(rate, color="grey", ls="--", label=f"random (AURC {rate:.3f})")
    ax.set_xlabel("coverage (fraction of sentences the fast tier keeps)")
    ax.set_ylabel("selective risk (sentence error rate among kept)")
    ax.set_title(f"Fast tier risk-coverage, {sel['sentences']} dev sentences")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- (b) routing overhead --------------------------------------------------------------------------


def routing_overhead(analyses: list[Any], ood: OODStats | None, repeat: int) -> dict[str, Any]:
    from deployments.llm_tier.config import LLMTierConfig

    router = Router(load_router_config(POLICIES))
    router.set_running_models(fast=analyses[0].model_tag, llm=LLMTierConfig().model_id)
    for a in analyses:  # warm-up
        router.decide(compute_signals(a, ood))
    total, sig_ms, dec_ms = [], [], []
    actions: dict[str, int] = {}
    for _ in range(repeat):
        for a in analyses:
            t0 = time.perf_counter()
            s = compute_signals(a, ood)
            t1 = time.perf_counter()
            d = router.decide(s)
            t2 = time.perf_counter()
            sig_ms.append((t1 - t0) * 1000)
            dec_ms.append((t2 - t1) * 1000)
            total.append((t2 - t0) * 1000)
            actions[d.reason] = actions.get(d.reason, 0) + 1

    def pct(v: list[float]) -> dict[str, float]:
        return {f"p{q}_ms": round(float(np.percentile(v, q)), 4) for q in (50, 95, 99)}

    return {
        "policies": str(POLICIES.relative_to(REPO_ROOT) if POLICIES.is_relative_to(REPO_ROOT) else POLICIES),
        "timed_calls": len(total),
        "per_note": pct(total),
        "compute_signals": pct(sig_ms),
        "decide": pct(dec_ms),
        "mean_tokens_per_note": round(float(np.mean([len(a.token_offsets) for a in analyses])), 1),
        "decisions": actions,
        "target_p50_ms": 1.0,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }


# -- (c) quality vs cost ---------------------------------------------------------------------------


def llm_predictions(args: argparse.Namespace, model_dir: Path, docs: list[Document], out_dir: Path) -> dict[str, Any]:
    """The LLM tier's whole-note results on the dev notes, by name (and how they were obtained)."""
    if args.llm_pred:
        path = Path(args.llm_pred)
        results: dict[str, NoteResult] = {}
        errors = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            obj = json.loads(line)
            if "error" in obj:
                errors += 1
                continue
            results[str(obj["note_id"])] = NoteResult.model_validate(obj)
        return {"results": results, "source": str(path), "errors": errors, "wall_s": None}
    from clinie.inputs import NoteInput
    from deployments.llm_tier.config import LLMTierConfig
    from serve_app.pipeline import Pipeline

    print(f"running the LLM tier (llm-only) on {len(docs)} dev notes; this takes minutes on CPU ...", flush=True)
    # every note is submitted at once, so a per-note deadline counts the whole batch's queueing:
    # the serving default (120 s) would time every note out on CPU
    pipeline = Pipeline(model_dir=model_dir, llm=LLMTierConfig(request_timeout_s=args.llm_timeout))
    t0 = time.perf_counter()
    answers = pipeline.run([NoteInput(note_id=d.name, text=d.text) for d in docs], policy="llm-only")
    wall = time.perf_counter() - t0
    path = out_dir / "llm_dev_predictions.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in answers:
            fh.write(json.dumps(r.model_dump(mode="json"), ensure_ascii=False) + "\n")
    print(f"wrote {path} (reuse with --llm-pred {path})", flush=True)
    results = {str(r.note_id): r for r in answers if isinstance(r, NoteResult)}
    return {
        "results": results,
        "source": f"llm-only run, saved to {path}",
        "errors": sum(isinstance(r, NoteError) for r in answers),
        "wall_s": round(wall, 1),
    }


def random_escalation(
    docs: list[Document],
    fast: dict[str, NoteResult],
    llm: dict[str, NoteResult],
    signals: dict[str, NoteSignals],
    rates: list[float],
    seeds: int = 5,
) -> list[dict[str, Any]]:
    """The same curve with sentences escalated at random (mean F1 over `seeds` draws)."""
    index = [(n, i) for n in signals for i in range(len(signals[n].sentences))]
    sentences = {n: signals[n].sentences for n in signals}
    out = []
    for rate in rates:
        k = round(rate * len(index))
        f1s = []
        for seed in range(seeds):
            pick = np.random.default_rng(seed).permutation(len(index))[:k]
            esc: dict[str, list[int]] = {}
            for j in pick:
                n, i = index[j]
                esc.setdefault(n, []).append(i)
            f1s.append(f1_summary(simulate(docs, fast, llm, esc, sentences)))
        out.append({"rate": rate, "realized_rate": round(k / len(index), 4), "f1": _mean_f1(f1s)})
    return out


def _mean_f1(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}


def gold_as_results(docs: list[Document]) -> dict[str, NoteResult]:
    """The gold annotations as results: a perfect LLM tier, for the counterfactual curve."""
    from clinie.schema import EntitySpan, ModifierSpan, Relation, Route

    out = {}
    for d in docs:
        ents = [
            EntitySpan(id=g.id, type=g.label, start=g.start, end=g.end, text=d.text[g.start : g.end], confidence=1.0)
            for g in d.entities
        ]
        mods = [
            ModifierSpan(id=g.id, type=g.label, start=g.start, end=g.end, text=d.text[g.start : g.end], confidence=1.0)
            for g in d.modifiers
        ]
        rels = [Relation(entity=r.entity, modifier=r.modifier, confidence=1.0) for r in d.relations]
        route = Route(tier="gold", escalated=True, reason="oracle")
        out[d.name] = NoteResult(note_id=d.name, entities=ents, modifiers=mods, relations=rels, route=route)
    return out


def plot_quality(
    panels: list[tuple[str, dict[str, Any], list[dict[str, Any]]]], rate_path: Path, cost_path: Path
) -> None:
    """One figure per x axis (rate, cost), one panel per LLM answer source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("relaxed_entities", "C0"), ("strict_entities", "C1"), ("relaxed_modifiers", "C2")]
    groups += [("relaxed_relations", "C3")]
    for path, xkey, xlabel in (
        (rate_path, "realized_rate", "fraction of sentences escalated"),
        (cost_path, "llm_tokens", "estimated LLM cost (tokens x cost per token)"),
    ):
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
        for ax, (title, curve, rand) in zip(axes[0], panels, strict=True):
            pts = curve["points"]
            for key, color in groups:
                ax.plot([p[xkey] for p in pts], [p["f1"][key] for p in pts], "-o", ms=3, color=color, label=key)
                if xkey == "realized_rate":
                    ax.plot(
                        [r["realized_rate"] for r in rand],
                        [r["f1"][key] for r in rand],
                        ":",
                        color=color,
                        alpha=0.7,
                        label=f"{key}, random escalation",
                    )
                fx = curve["fast_only"][xkey] if xkey == "llm_tokens" else 0.0
                ax.plot([fx], [curve["fast_only"]["f1"][key]], "s", color=color, ms=7)
                ax.plot([curve["llm_only"][xkey]], [curve["llm_only"]["f1"][key]], "*", color=color, ms=11)
            ax.plot([], [], "ks", label="fast-only")
            ax.plot([], [], "k*", label="llm-only")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("F1")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{title}: {curve['notes']} dev notes, escalating by {curve['signal']}", fontsize=10)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _print_curve(curve: dict[str, Any], rand: list[dict[str, Any]]) -> None:
    head = ["rate", "real.", "tokens", "s ent", "s mod", "s rel", "r ent", "r mod", "r rel", "rand r ent"]
    widths = [5, 6, 9, 6, 6, 6, 6, 6, 6, 10]
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))

    def row(label: str, real: float, tokens: float, f: dict[str, float], rnd: str = "") -> None:
        vals = " ".join(f"{f[k]:6.3f}" for k in ("strict_entities", "strict_modifiers", "strict_relations"))
        vals += " " + " ".join(f"{f[k]:6.3f}" for k in ("relaxed_entities", "relaxed_modifiers", "relaxed_relations"))
        print(f"{label:>5} {real:6.3f} {tokens:9.0f} {vals} {rnd:>10}")

    row("fast", 0.0, 0.0, curve["fast_only"]["f1"])
    for pt, r in zip(curve["points"], rand, strict=True):
        row(f"{pt['rate']:.2f}", pt["realized_rate"], pt["llm_tokens"], pt["f1"], f"{r['f1'][HEADLINE]:.3f}")
    row("llm", 1.0, curve["llm_only"]["llm_tokens"], curve["llm_only"]["f1"])
    for key, gm in curve["gap_metrics"].items():
        print(
            f"  {key:18} fast {gm['fast']:.3f} llm {gm['llm']:.3f} gap {gm['gap']:+.3f} "
            f"APGR {gm['apgr']} (area {gm['apgr_area']}) CPT50 {gm['cpt50']}"
        )


def quality_section(
    docs: list[Document],
    fast: dict[str, NoteResult],
    llm_results: dict[str, NoteResult],
    signals: dict[str, NoteSignals],
    best: str,
    candidates: list[str],
    out_dir: Path,
) -> dict[str, Any] | None:
    """(c): the curve with the best signal, a random-escalation baseline and APGR/CPT of every
    signal, with the real LLM tier's answers and, as a counterfactual, with a perfect one (gold)."""
    if not llm_results:
        print("\nquality vs cost skipped: no LLM result on any dev note (see the predictions file)")
        return None
    out: dict[str, Any] = {}
    panels = []
    for label, answers in (("llm_tier", llm_results), ("perfect_llm_counterfactual", gold_as_results(docs))):
        curve = quality_curve(docs, fast, answers, signals, best)
        rand = random_escalation(docs, fast, answers, signals, [pt["rate"] for pt in curve["points"]])
        per_signal = {}
        for name in candidates:
            c = curve if name == best else quality_curve(docs, fast, answers, signals, name)
            gm = c["gap_metrics"][HEADLINE]
            at20 = next(pt for pt in c["points"] if abs(pt["rate"] - TARGET_RATE) < 1e-9)
            per_signal[name] = {"apgr": gm["apgr"], "cpt50": gm["cpt50"], f"{HEADLINE}_at_20": at20["f1"][HEADLINE]}
        rand_f1 = [r["f1"][HEADLINE] for r in rand]
        rand_apgr = None
        gap = curve["llm_only"]["f1"][HEADLINE] - curve["fast_only"]["f1"][HEADLINE]
        if gap:
            rand_apgr = round(float(np.mean([(f - curve["fast_only"]["f1"][HEADLINE]) / gap for f in rand_f1])), 4)
        out[label] = {**curve, "random_escalation": rand, "random_apgr": rand_apgr, "per_signal": per_signal}
        title = "LLM tier" if label == "llm_tier" else "perfect LLM (gold answers, counterfactual)"
        panels.append((title, curve, rand))
        print(f"\nquality vs rate, {title}, escalating by {best} (F1 strict | relaxed: entities, modifiers, relations)")
        _print_curve(curve, rand)
        print(f"  random escalation APGR ({HEADLINE}): {rand_apgr}")
        print(f"  per signal ({HEADLINE}):", json.dumps(per_signal))
    plot_quality(panels, out_dir / "quality_vs_rate.png", out_dir / "quality_vs_cost.png")
    out["note"] = (
        "llm_tier: the configured LLM tier's answers (the headline curve). perfect_llm_counterfactual: the "
        "gold annotations as the LLM's answers, an upper bound showing what the ranking buys with a strong LLM."
    )
    return out


# -- (e) quality vs cost of the shipped policies ---------------------------------------------------------

HEADLINE_KEYS = ("relaxed_entities", "relaxed_relations")


def halves(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """Two folds of the dev notes for cross-fitting: alternate notes in name order."""
    ordered = sorted(docs, key=lambda d: d.name)
    return ordered[0::2], ordered[1::2]


def with_gain_table(base: RouterConfig, table: dict[str, Any], fast_id: str, llm_id: str, data: str) -> RouterConfig:
    """The shipped configuration with its `gain` policy's table replaced by `table`."""
    raw = base.model_dump(mode="json")
    old = raw["policies"].get("gain", {})
    spec = gain_policy_spec(table, old.get("min_gain_per_cost", 0.0), old.get("margin_se", 1.0))
    raw["policies"]["gain"] = spec
    raw["calibrated_for"] = {"fast": fast_id, "llm": llm_id, "data": data}
    return RouterConfig.model_validate(raw)


def run_in_process(pipeline: Any, docs: list[Document], policy: str | None, sentences_total: int) -> dict[str, Any]:
    """One real in-process run of a policy over the notes: scores of what it answered, escalation
    shares, LLM tokens (the router's estimate), wall time (LLM engine start included when it
    escalates: the pipeline starts its engine on the first escalation of a run)."""
    from clinie.inputs import NoteInput

    t0 = time.perf_counter()
    answers = pipeline.run([NoteInput(note_id=d.name, text=d.text) for d in docs], policy=policy)
    wall = time.perf_counter() - t0
    results = {str(r.note_id): r for r in answers if isinstance(r, NoteResult)}
    preds = {n: document_from_result(n, d.text, results[n]) for d in docs if (n := d.name) in results}
    reasons: dict[str, int] = {}
    esc_sent = esc_notes = 0
    tokens = 0.0
    for r in results.values():
        reasons[r.route.reason] = reasons.get(r.route.reason, 0) + 1
        if r.route.escalated:
            esc_notes += 1
            esc_sent += int(r.route.signals.get("escalated_sentences", 0))
            tokens += float(r.route.signals.get("llm_tokens_estimate", 0.0))
    return {
        "_preds": preds,  # for scoring folds together; popped before the report is written
        "policy": policy or "(default)",
        "notes": len(docs),
        "errors": len(answers) - len(results),
        "f1": f1_summary(score_documents(docs, preds)),
        "escalated_sentence_share": round(esc_sent / max(sentences_total, 1), 4),
        "escalated_note_share": round(esc_notes / max(len(docs), 1), 4),
        "llm_tokens": round(tokens, 1),
        "wall_s": round(wall, 2),
        "wall_s_per_note": round(wall / max(len(docs), 1), 3),
        "reasons": dict(sorted(reasons.items())),
    }


def simulated_row(
    docs: list[Document],
    fast: dict[str, NoteResult],
    answers: dict[str, NoteResult],
    signals: dict[str, NoteSignals],
    routers: dict[str, Router],
    policy: str,
) -> dict[str, Any]:
    """F1 and cost of routing each note with `routers[note]` and `answers` as the LLM's answers."""
    esc: dict[str, list[int]] = {}
    tokens = 0.0
    notes = 0
    reasons: dict[str, int] = {}
    for d in docs:
        dec = routers[d.name].decide(signals[d.name], policy)
        reasons[dec.reason] = reasons.get(dec.reason, 0) + 1
        if dec.escalates:
            notes += 1
            tokens += dec.llm_tokens
            esc[d.name] = list(range(len(signals[d.name].sentences))) if dec.action == "note" else dec.sentences
    sentences = {d.name: signals[d.name].sentences for d in docs}
    total = sum(len(v) for v in sentences.values())
    return {
        "policy": policy,
        "notes": len(docs),
        "f1": f1_summary(simulate(docs, fast, answers, esc, sentences)),
        "escalated_sentence_share": round(sum(len(v) for v in esc.values()) / max(total, 1), 4),
        "escalated_note_share": round(notes / max(len(docs), 1), 4),
        "llm_tokens": round(tokens, 1),
        "reasons": dict(sorted(reasons.items())),
    }


def _fold_routers(
    base: RouterConfig,
    folds: tuple[list[Document], list[Document]],
    fast: dict[str, NoteResult],
    answers: dict[str, NoteResult],
    signals: dict[str, NoteSignals],
    fast_id: str,
    llm_id: str,
    label: str,
) -> tuple[dict[str, Router], list[dict[str, Any]]]:
    """Per note, a router whose gain table was fitted on the other fold only."""
    gain = base.all_policies()["gain"]
    routers: dict[str, Router] = {}
    tables = []
    for fit, held in (folds, folds[::-1]):
        table = fit_gain_table(fit, fast, answers, signals, gain.signal, metrics=gain.metrics)
        cfg = with_gain_table(base, table, fast_id, llm_id, f"{label}: fold of {len(fit)} dev notes")
        r = Router(cfg)
        r.set_running_models(fast=fast_id, llm=llm_id)
        for d in held:
            routers[d.name] = r
        tables.append({"fitted_on": [d.name for d in fit], "buckets": cfg.policies["gain"]["buckets"]})
    return routers, tables


def headline(
    docs: list[Document],
    fast: dict[str, NoteResult],
    llm_results: dict[str, NoteResult],
    llm_wall_s: float | None,
    signals: dict[str, NoteSignals],
    model_dir: Path,
    out_dir: Path,
    llm_timeout: float,
) -> dict[str, Any]:
    from deployments.llm_tier.config import LLMTierConfig
    from serve_app.pipeline import Pipeline

    shipped = load_router_config(POLICIES)
    fast_id = next(iter(fast.values())).models.get("bert", "")
    llm_cfg = LLMTierConfig(request_timeout_s=llm_timeout)
    llm_id = llm_cfg.model_id
    total = sum(len(s.sentences) for s in signals.values())
    folds = halves(docs)
    out: dict[str, Any] = {
        "notes": len(docs),
        "sentences": total,
        "models": {"fast": fast_id, "llm": llm_id},
        "shipped_calibrated_for": shipped.calibrated_for.model_dump() if shipped.calibrated_for else None,
        "folds": [[d.name for d in f] for f in folds],
    }
    if shipped.calibrated_for is not None and (shipped.calibrated_for.fast, shipped.calibrated_for.llm) != (
        fast_id,
        llm_id,
    ):
        print(f"NOTE: the shipped policies were calibrated for {shipped.calibrated_for}, running {fast_id}, {llm_id}")

    # the real runs, in process, with the embedded LLM tier
    pipeline = Pipeline(model_dir=model_dir, llm=llm_cfg, router=shipped)
    pipeline.fast.extract([("warmup", docs[0].text)])  # load and warm the fast tier outside the timings
    runs: dict[str, Any] = {}
    # fast-only and default alternate, twice, and keep their faster run: other work on this
    # machine's two cores moves single timings by more than the difference being measured
    for label, policy in (("fast-only", "fast-only"), ("default", None)) * 2 + (("calibrated", "calibrated"),):
        print(f"in process: {label} on {len(docs)} dev notes ...", flush=True)
        run = run_in_process(pipeline, docs, policy, total)
        run.pop("_preds")
        walls = [*runs.get(label, {}).get("wall_s_runs", []), run["wall_s"]]
        if label not in runs or run["wall_s"] < runs[label]["wall_s"]:
            runs[label] = run
        runs[label].update({"label": label, "wall_s_runs": walls})
    runs["default"]["note"] = "shipped gain table, fitted on these same 20 dev notes (in-sample)"
    # cross-fitted default: each half routed by a table fitted on the other half, run for real
    routers, tables = _fold_routers(shipped, folds, fast, llm_results, signals, fast_id, llm_id, "LLM tier")
    parts = []
    for i, held in enumerate(folds):
        fold_pipeline = Pipeline(model_dir=model_dir, llm=llm_cfg, router=routers[held[0].name].config)
        fold_pipeline._fast = pipeline.fast  # the same warm engine
        print(f"in process: default cross-fitted, fold {i + 1} ({len(held)} notes) ...", flush=True)
        held_total = sum(len(signals[d.name].sentences) for d in held)
        parts.append((held, held_total, run_in_process(fold_pipeline, held, None, held_total)))
    preds: dict[str, Document] = {}
    reasons: dict[str, int] = {}
    for _, _, r in parts:
        preds.update(r.pop("_preds"))
        for k, v in r["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    wall = sum(r["wall_s"] for _, _, r in parts)
    cross = {
        "label": "default (cross-fitted)",
        "policy": "default",
        "notes": len(docs),
        # F1 from the folds' decisions applied to the fast tier's answers of the one 20-note pass
        # (the other rows' fast answers) and the LLM tier's cached answers: a fold run analyses 10
        # notes per batch, and int8 dynamic quantization makes the fast tier's answers depend a
        # little on what else is in the batch, which is not the routing's doing
        "f1": simulated_row(docs, fast, llm_results, signals, routers, "default")["f1"],
        "f1_fold_runs": f1_summary(score_documents(docs, preds)),
        "escalated_sentence_share": round(sum(r["escalated_sentence_share"] * t for _, t, r in parts) / total, 4),
        "escalated_note_share": round(sum(r["escalated_note_share"] * len(h) for h, _, r in parts) / len(docs), 4),
        "llm_tokens": round(sum(r["llm_tokens"] for _, _, r in parts), 1),
        "wall_s": round(wall, 2),
        "wall_s_per_note": round(wall / len(docs), 3),
        "reasons": dict(sorted(reasons.items())),
        "fold_runs": [r for _, _, r in parts],
        "tables": tables,
        "note": "each half of the dev notes run in process with a gain table fitted on the other half only; "
        "escalation shares, tokens and wall time from those runs",
    }
    llm_only = {
        "label": "llm-only",
        "policy": "llm-only",
        "notes": len(docs),
        "f1": f1_summary(
            score_documents(
                docs, {n: document_from_result(n, d.text, llm_results[n]) for d in docs if (n := d.name) in llm_results}
            )
        ),
        "escalated_sentence_share": 1.0,
        "escalated_note_share": 1.0,
        "llm_tokens": round(sum(shipped.costs.llm_tokens(s.sentence_chars) for s in signals.values()), 1),
        "wall_s": llm_wall_s,
        "wall_s_per_note": None if llm_wall_s is None else round(llm_wall_s / len(docs), 3),
        "note": "the cached llm-only run (--llm-pred) whose answers the gain tables are fitted on",
    }
    # counterfactual: a perfect LLM (gold answers), simulated
    gold = gold_as_results(docs)
    shipped_router = Router(shipped)
    shipped_router.set_running_models(fast=fast_id, llm=llm_id)
    oracle_routers, oracle_tables = _fold_routers(shipped, folds, fast, gold, signals, fast_id, llm_id, "oracle")
    oracle = {
        "calibrated": {
            **simulated_row(docs, fast, gold, signals, dict.fromkeys(fast, shipped_router), "calibrated"),
            "label": "calibrated, perfect LLM (counterfactual)",
        },
        "gain_cross_fitted": {
            **simulated_row(docs, fast, gold, signals, oracle_routers, "gain"),
            "label": "gain (cross-fitted on gold answers), perfect LLM (counterfactual)",
            "tables": oracle_tables,
        },
    }
    rows = [runs["fast-only"], runs["default"], cross, runs["calibrated"], llm_only, *oracle.values()]
    # the loss is measured against the fast tier's answers of the same pass the cross-fitted F1 uses
    base_f1 = f1_summary(simulate(docs, fast, llm_results, {}, {n: s.sentences for n, s in signals.items()}))
    base_wall = runs["fast-only"]["wall_s_per_note"]
    target = {
        "definition": "default loses <= 0.5 point of relaxed entity and relation F1 to fast-only and takes <= 1.5x "
        "its wall time (in process, same notes); measured with the cross-fitted default",
        "loss_points": {k: round(100 * (base_f1[k] - cross["f1"][k]), 2) for k in HEADLINE_KEYS},
        "fast_only_f1_same_pass": base_f1,
        "wall_ratio": round(cross["wall_s_per_note"] / base_wall, 3) if base_wall else None,
        "shipped_default_wall_ratio": round(runs["default"]["wall_s_per_note"] / base_wall, 3) if base_wall else None,
    }
    target["met"] = bool(
        all(v <= 0.5 for v in target["loss_points"].values())
        and target["wall_ratio"] is not None
        and target["wall_ratio"] <= 1.5
    )
    out.update({"rows": rows, "target": target, "oracle": oracle})
    # the gain table the shipped default holds (and the same fit with gold answers)
    gain_cfg = shipped.all_policies()["gain"]
    out["gain_tables"] = {
        "llm_tier": fit_gain_table(docs, fast, llm_results, signals, gain_cfg.signal, metrics=gain_cfg.metrics),
        "perfect_llm_counterfactual": fit_gain_table(
            docs, fast, gold, signals, gain_cfg.signal, metrics=gain_cfg.metrics
        ),
    }
    for t in out["gain_tables"].values():
        t.pop("values")
        t.pop("gains")
    _print_headline(rows, target)
    plot_headline(rows, out["gain_tables"], gain_cfg.signal, out_dir)
    return out


def _print_headline(rows: list[dict[str, Any]], target: dict[str, Any]) -> None:
    keys = [f"{m}_{g}" for m in ("strict", "relaxed") for g in ("entities", "modifiers", "relations")]
    print("\nquality vs cost (dev notes; F1 strict ent/mod/rel | relaxed ent/mod/rel)")
    print(f"{'row':60} {'F1':>41} {'sent.':>6} {'notes':>6} {'tokens':>9} {'s/note':>7}")
    for r in rows:
        f = " ".join(f"{r['f1'][k]:.3f}" for k in keys)
        wall = r.get("wall_s_per_note")
        print(
            f"{r.get('label', r['policy'])[:60]:60} {f:>41} {r['escalated_sentence_share']:6.3f} "
            f"{r['escalated_note_share']:6.3f} {r['llm_tokens']:9.0f} {'' if wall is None else f'{wall:7.2f}':>7}"
        )
    print(f"target: {json.dumps(target)}")


def plot_headline(rows: list[dict[str, Any]], tables: dict[str, Any], signal: str, out_dir: Path) -> None:
    """`headline.png`: relaxed entity and relation F1 against LLM tokens and wall time per note;
    `gain_table.png`: the gain per bucket (± 1 standard error) that decided the default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, xkey, xlabel in (
        (axes[0], "llm_tokens", "estimated LLM tokens on the dev notes"),
        (axes[1], "wall_s_per_note", "wall time per note, in process (s)"),
    ):
        for i, r in enumerate(rows):
            if r.get(xkey) is None:
                continue
            for key, marker in (("relaxed_entities", "o"), ("relaxed_relations", "s")):
                ax.plot([r[xkey]], [r["f1"][key]], marker, color=f"C{i}", ms=8)
            ax.plot([], [], "o", color=f"C{i}", label=r.get("label", r["policy"]))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("F1 (o relaxed entities, s relaxed relations)")
        ax.set_ylim(0, 1.02)
        if xkey == "llm_tokens":  # 0 for the policies that escalate nothing, ~1e5 for llm-only
            ax.set_xscale("symlog", linthresh=1000)
        ax.set_xlim(left=0)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Quality vs cost on the dev notes: shipped policies, embedded LLM tier, perfect-LLM counterfactual")
    fig.tight_layout()
    fig.savefig(out_dir / "headline.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for (label, t), color in zip(tables.items(), ("C3", "C2"), strict=False):
        b = t["buckets"]
        x = np.arange(len(b))
        ax.errorbar(x, [r["gain"] for r in b], yerr=[r["se"] for r in b], fmt="-o", color=color, capsize=3, label=label)
        ax.set_xticks(
            x, [f"<{r['upper']:.3g}" if r["upper"] is not None else "rest" for r in b], rotation=45, fontsize=7
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel(
        f"bucket of {signal} (riskiest first)" if SIGNALS[signal].riskier == "lower" else f"bucket of {signal}"
    )
    ax.set_ylabel("gain: change of F1 per unit share of sentences escalated")
    notes = next(iter(tables.values()))["notes"]
    ax.set_title(
        f"Gain of the LLM tier's answer over the fast tier's, per bucket ({notes} dev notes, +-1 se)", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "gain_table.png", dpi=110)
    plt.close(fig)


# -- (d) OOD probe ---------------------------------------------------------------------------------


def _piece(text: str, lo: int = 1500, hi: int = 3000, target: int = 2200) -> str | None:
    """The first note-sized piece of a text, cut at a paragraph, line or word boundary."""
    text = text.strip()
    if len(text) < lo:
        return None
    if len(text) <= hi:
        return text
    for sep in ("\n\n", "\n", " "):
        cut = text.rfind(sep, lo, target + 1)
        if cut < 0:
            cut = text.find(sep, target, hi)
        if cut >= lo:
            return text[:cut].strip()
    return text[:target]


def ood_texts(limit_readme: int = 35, limit_license: int = 15) -> list[dict[str, str]]:
    """Real non-clinical English: package READMEs (the long description in each installed
    distribution's METADATA) and distinct licence texts, from this environment's site-packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    out: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(kind: str, source: Path, text: str | None) -> bool:
        if text is None:
            return False
        key = hashlib.sha1(
            " ".join(re.findall(r"\w+", re.sub(r"https?://\S+", "", text.lower()))[:40]).encode()
        ).hexdigest()
        if key in seen:
            return False
        try:
            validate_text(text, 1_000_000)
        except ValueError:
            return False
        seen.add(key)
        out.append({"kind": kind, "source": str(source.relative_to(site)), "text": text})
        return True

    readmes = 0
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        if readmes >= limit_readme:
            break
        if meta.parent.name.startswith("clinie-"):  # our own README is about clinical notes
            continue
        raw = meta.read_text(encoding="utf-8", errors="replace")
        body = raw.split("\n\n", 1)[1] if "\n\n" in raw else ""
        body = re.sub(r"\[!\[[^\n]*\n", "", body)  # badge lines carry no prose
        readmes += add("readme", meta, _piece(body))
    licenses = 0
    for lic in sorted([*site.glob("*.dist-info/LICENSE*"), *site.glob("*.dist-info/licenses/**/*")]):
        if licenses >= limit_license:
            break
        if lic.is_file() and not lic.parent.name.startswith("clinie-"):
            licenses += add("license", lic, _piece(lic.read_text(encoding="utf-8", errors="replace")))
    return out


def ood_probe(engine: FastTierEngine, ood: OODStats, dev_scores: dict[str, float], unlabelled: int) -> dict[str, Any]:
    rows = [json.loads(line) for line in UNLABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    pick = [rows[i] for i in np.linspace(0, len(rows) - 1, min(unlabelled, len(rows))).round().astype(int)]
    pieces = ood_texts()
    notes = [(str(r["note_id"]), r["text"]) for r in pick] + [(p["source"], p["text"]) for p in pieces]
    print(f"OOD probe: {len(pick)} unlabelled notes, {len(pieces)} non-clinical pieces ...", flush=True)
    analyses = engine.analyze(notes, progress=True, relations=False)
    scores = [ood.score(a.embedding) for a in analyses]
    unl, far = scores[: len(pick)], scores[len(pick) :]
    dev = list(dev_scores.values())
    by_kind: dict[str, list[float]] = {}
    for p, s in zip(pieces, far, strict=True):
        by_kind.setdefault(p["kind"], []).append(s)
    return {
        "score": "ood_mahalanobis (Mahalanobis distance / sqrt(d) from the training notes' embeddings)",
        "train_p50": round(ood.train_p50, 4),
        "train_p95": round(ood.train_p95, 4),
        "in_distribution": {
            "dev": _stats(dev),
            "unlabelled": {**_stats(unl), "source": str(UNLABELLED.relative_to(REPO_ROOT.parent))},
        },
        "out_of_distribution": {"all": _stats(far), **{k: _stats(v) for k, v in by_kind.items()}},
        "auroc_ood_vs_dev": round(auroc(far, dev), 4),
        "auroc_ood_vs_unlabelled": round(auroc(far, unl), 4),
        "auroc_unlabelled_vs_dev": round(auroc(unl, dev), 4),
        "ood_above_train_p95": round(float(np.mean(np.asarray(far) > ood.train_p95)), 4),
        "dev_above_train_p95": round(float(np.mean(np.asarray(dev) > ood.train_p95)), 4),
        "ood_higher_than_dev": bool(np.mean(far) > np.mean(dev) and np.median(far) > np.median(dev)),
        "ood_sources": [
            {"kind": p["kind"], "source": p["source"], "chars": len(p["text"]), "score": round(s, 4)}
            for p, s in zip(pieces, far, strict=True)
        ],
        "unlabelled_notes": [r["note_id"] for r in pick],
    }


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        help="Fast-tier model directory (default: $CLINIE_MODEL_DIR or the embedded default's held-out "
        "model, trained on the train split).",
    )
    p.add_argument("--notes", type=int, default=20, help="How many dev notes (from the model card's dev list).")
    p.add_argument("--llm-pred", help="LLM-tier predictions (JSONL) on the dev notes; default: run the LLM tier.")
    p.add_argument("--output-dir", default="benchmarks/results", help="Where the JSON and PNGs go.")
    p.add_argument("--llm-timeout", type=float, default=3600.0, help="LLM deadline per note, s (whole batch).")
    p.add_argument("--overhead-repeat", type=int, default=50, help="Passes over the notes when timing routing.")
    p.add_argument("--unlabelled", type=int, default=50, help="Unlabelled in-distribution notes for the OOD probe.")
    p.add_argument(
        "--llm-wall-s", type=float, help="Wall time of the run that wrote --llm-pred (for the llm-only row)."
    )
    p.add_argument("--skip-ood", action="store_true", help="Skip the OOD probe (d).")
    p.add_argument("--policies", help="Policy file for (b) and (e) (default: the shipped one).")
    args = p.parse_args(argv)
    global POLICIES
    if args.policies:
        POLICIES = Path(args.policies).resolve()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    model_dir = resolve_model_dir(args.model, held_out=True)
    docs = dev_documents(model_dir)[: args.notes]
    engine = FastTierEngine(EngineConfig(model_dir=model_dir))
    ood_file = model_dir / OOD_FILE
    ood = OODStats.load_if_present(ood_file)
    print(f"fast tier on {len(docs)} dev notes ...", flush=True)
    analyses = engine.analyze([(d.name, d.text) for d in docs], progress=True)
    fast = {d.name: analysis_to_result(a, fast_route()) for d, a in zip(docs, analyses, strict=True)}
    signals = {d.name: compute_signals(a, ood) for d, a in zip(docs, analyses, strict=True)}
    errors = {d.name: sentence_errors(d, fast[d.name], signals[d.name].sentences) for d in docs}
    relaxed = {d.name: sentence_errors(d, fast[d.name], signals[d.name].sentences, "relaxed") for d in docs}

    # (a)
    sel = selective_prediction(signals, errors, relaxed)
    best = min(sel["sentence_signals"], key=lambda k: sel["sentence_signals"][k]["aurc"])
    plot_risk_coverage(sel, out_dir / "risk_coverage.png")
    print(f"\n{'signal':22} {'AURC':>7} {'random':>7} {'oracle':>7} {'reduct.':>8} {'err@20%':>8}")
    for name, s in sorted(sel["sentence_signals"].items(), key=lambda kv: kv[1]["aurc"]):
        cap = s["errors_captured"][f"{TARGET_RATE:g}"]
        print(
            f"{name:22} {s['aurc']:7.4f} {s['random_aurc']:7.4f} {s['oracle_aurc']:7.4f} "
            f"{s['aurc_reduction_vs_random']:8.1%} {cap:8.1%}"
        )
    print(f"({sel['sentence_errors']} of {sel['sentences']} sentences in error; best signal: {best})")
    rel = sel["relaxed_errors"]
    print(f"relaxed errors ({rel['sentence_errors']} sentences, rate {rel['sentence_error_rate']:.3f}):")
    for name, s in sorted(rel["sentence_signals"].items(), key=lambda kv: kv[1]["aurc"]):
        cap = s["errors_captured"][f"{TARGET_RATE:g}"]
        print(
            f"  {name:22} AURC {s['aurc']:.4f} vs random {s['random_aurc']:.4f} ({s['aurc_reduction_vs_random']:.1%}), "
            f"err@20% {cap:.1%}"
        )
    print("note level (loss = note's sentence error rate):")
    for name, s in sorted(sel["note_signals"].items(), key=lambda kv: kv[1]["aurc"]):
        print(f"  {name:22} AURC {s['aurc']:.4f} vs random {s['random_aurc']:.4f}")

    # (b)
    overhead = routing_overhead(analyses, ood, args.overhead_repeat)
    o = overhead["per_note"]
    print(f"\nrouting overhead per note: p50 {o['p50_ms']:.3f} ms, p95 {o['p95_ms']:.3f} ms", flush=True)

    # (c)
    llm = llm_predictions(args, model_dir, docs, out_dir)
    llm_results = llm.pop("results")
    quality = quality_section(docs, fast, llm_results, signals, best, list(sel["sentence_signals"]), out_dir)
    if llm["errors"]:
        print(f"WARNING: the LLM tier failed on {llm['errors']} of {len(docs)} notes (they keep the fast answer)")

    # (e)
    head = None
    if llm_results:
        head = headline(
            docs, fast, llm_results, args.llm_wall_s or llm["wall_s"], signals, model_dir, out_dir, args.llm_timeout
        )

    # (d)
    probe = None
    if ood is not None and not args.skip_ood:
        probe = ood_probe(engine, ood, {n: s.note["ood_mahalanobis"] for n, s in signals.items()}, args.unlabelled)
        ind, far = probe["in_distribution"], probe["out_of_distribution"]
        print(
            f"\nOOD probe: dev mean {ind['dev']['mean']:.3f} (median {ind['dev']['median']:.3f}), unlabelled mean "
            f"{ind['unlabelled']['mean']:.3f}, non-clinical mean {far['all']['mean']:.3f} "
            f"(median {far['all']['median']:.3f}); AUROC OOD vs dev {probe['auroc_ood_vs_dev']:.3f}"
        )
        print("OOD side scores higher than dev:", "yes" if probe["ood_higher_than_dev"] else "NO")
    else:
        print(f"\nOOD probe skipped: no {OOD_FILE} with the model")

    best_sel = sel["sentence_signals"][best]
    report = {
        "model_dir": str(model_dir),
        "dev_notes": len(docs),
        "best_signal": best,
        "targets": {
            "errors_captured_at_20pct": {
                "target": 0.5,
                "measured": best_sel["errors_captured"][f"{TARGET_RATE:g}"],
                "random": TARGET_RATE,
                "oracle": best_sel["oracle_errors_captured"][f"{TARGET_RATE:g}"],
            },
            "best_aurc_reduction_vs_random": {"target": 0.4, "measured": best_sel["aurc_reduction_vs_random"]},
            "routing_overhead_p50_ms": {"target": 1.0, "measured": o["p50_ms"]},
        },
        "selective_prediction": sel,
        "routing_overhead": overhead,
        "llm_predictions": llm,
        "quality_vs_cost": quality,
        "headline": head,
        "ood_probe": probe,
    }
    write_report(report, out_dir / "router_eval.json")
    return report


if __name__ == "__main__":
    main()
