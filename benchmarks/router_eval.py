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

    python -m benchmarks.router_eval [--model DIR] [--notes 20] [--llm-pred FILE] [--output-dir benchmarks/results]

Writes `router_eval.json`, `risk_coverage.png`, `quality_vs_rate.png` and `quality_vs_cost.png`.
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
from clinie.brat import Document
from clinie.ood import OOD_FILE, OODStats
from clinie.schema import NoteError, NoteResult
from deployments.fast_tier.config import EngineConfig
from deployments.fast_tier.default import REPO_ROOT, resolve_model_dir
from deployments.fast_tier.engine import FastTierEngine, fast_route, validate_text
from router import SIGNALS, NoteSignals, Router, compute_signals, load_router_config
from router.simulate import (
    HEADLINE,
    errors_captured_at,
    f1_summary,
    quality_curve,
    risk_coverage,
    sentence_errors,
    simulate,
)

POLICIES = REPO_ROOT / "serve_app" / "configs" / "policies.default.yaml"
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
    router = Router(load_router_config(POLICIES))
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
        "policies": str(POLICIES.relative_to(REPO_ROOT)),
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
    p.add_argument("--model", help="Fast-tier model directory (default: $CLINIE_MODEL_DIR or the embedded default).")
    p.add_argument("--notes", type=int, default=20, help="How many dev notes (from the model card's dev list).")
    p.add_argument("--llm-pred", help="LLM-tier predictions (JSONL) on the dev notes; default: run the LLM tier.")
    p.add_argument("--output-dir", default="benchmarks/results", help="Where the JSON and PNGs go.")
    p.add_argument("--llm-timeout", type=float, default=3600.0, help="LLM deadline per note, s (whole batch).")
    p.add_argument("--overhead-repeat", type=int, default=50, help="Passes over the notes when timing routing.")
    p.add_argument("--unlabelled", type=int, default=50, help="Unlabelled in-distribution notes for the OOD probe.")
    args = p.parse_args(argv)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    model_dir = resolve_model_dir(args.model)
    docs = dev_documents(model_dir)[: args.notes]
    engine = FastTierEngine(EngineConfig(model_dir=model_dir))
    ood_file = model_dir / OOD_FILE
    ood = OODStats.load_if_present(ood_file)
    print(f"fast tier on {len(docs)} dev notes ...", flush=True)
    analyses = engine.analyze([(d.name, d.text) for d in docs], progress=True)
    fast = {d.name: analysis_to_result(a, fast_route(a)) for d, a in zip(docs, analyses, strict=True)}
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
    quality = quality_section(docs, fast, llm.pop("results"), signals, best, list(sel["sentence_signals"]), out_dir)
    if llm["errors"]:
        print(f"WARNING: the LLM tier failed on {llm['errors']} of {len(docs)} notes (they keep the fast answer)")

    # (d)
    probe = None
    if ood is not None:
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
        "ood_probe": probe,
    }
    write_report(report, out_dir / "router_eval.json")
    return report


if __name__ == "__main__":
    main()
