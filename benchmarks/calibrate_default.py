"""Calibrate the shipped policy file against the embedded pair, in one command.

    python -m benchmarks.calibrate_default [--llm-pred FILE] [--output serve_app/configs/policies.default.yaml]

1. The default fast tier's 20 dev notes (its model card's dev list) are written as a brat folder.
2. The embedded LLM tier's llm-only answers on them: `--llm-pred`, else the committed
   `benchmarks/data/llm_dev_predictions.jsonl` (kept in git so the shipped calibration is re-derived
   in a minute; delete it to re-measure), else one in-process run (about half an hour on 2 CPU cores)
   that writes it (the same step as `python -m benchmarks.router_eval`).
3. `clinie calibrate --gold DEV --target-rate 0.2 --llm-pred PRED -o OUTPUT`: `calibrated` (the
   uncertainty threshold at 20% of the dev sentences) and `gain` (the measured table, made the
   default) with `calibrated_for` naming the two models.

Then `python -m benchmarks.router_eval --llm-pred benchmarks/data/llm_dev_predictions.jsonl`
reports quality vs cost of the written policies (section (e)).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.fast_tier import dev_documents
from clinie.brat import write_document
from clinie.paths import DEFAULT_POLICIES, REPO_ROOT
from deployments.fast_tier.default import default_model_tag, resolve_model_dir

CACHE = REPO_ROOT / "benchmarks" / "data" / "llm_dev_predictions.jsonl"
OUTPUT = DEFAULT_POLICIES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Fast-tier model directory (default: the embedded default's held-out model).")
    p.add_argument("--llm-pred", help=f"LLM predictions on the dev notes (default: {CACHE}, made if missing).")
    p.add_argument("--output", default=str(OUTPUT), help="Policy file to write (default: the shipped one).")
    p.add_argument("--llm-timeout", type=float, default=3600.0, help="LLM deadline per note, s (whole batch).")
    args = p.parse_args(argv)

    model_dir = resolve_model_dir(args.model, held_out=True)
    docs = dev_documents(model_dir)
    pred = Path(args.llm_pred) if args.llm_pred else CACHE
    if not pred.is_file():
        from benchmarks.router_eval import llm_predictions

        ns = argparse.Namespace(llm_pred=None, llm_timeout=args.llm_timeout)
        llm_predictions(ns, model_dir, docs, CACHE.parent)
        pred = CACHE
    from serve_app.cli import main as clinie

    with tempfile.TemporaryDirectory(prefix="clinie-dev-") as tmp:
        gold = Path(tmp) / "dev"
        for d in docs:
            write_document(d, gold)
        argv_ = ["calibrate", "--gold", str(gold), "--model", str(model_dir), "--target-rate", "0.2"]
        code = clinie([*argv_, "--llm-pred", str(pred), "--output", args.output])
        out = Path(args.output)
        if code == 0:  # the header names the temporary folder: say what it held instead
            where = f"the {len(docs)} dev notes of the fast tier's model card"
            text = out.read_text(encoding="utf-8").replace(str(gold.resolve()), where)
            if args.model is None:
                text = _for_the_served_default(text, model_dir)
            out.write_text(text, encoding="utf-8")
        return code


def _for_the_served_default(text: str, held_out_dir: Path) -> str:
    """Name the served default in `calibrated_for.fast`: the table is measured with its held-out
    model (the only one of the recipe with notes it never saw), and the served default is the same
    recipe trained on every note (deployments/fast_tier/recipe.py); `data` says so."""
    held = json.loads((held_out_dir / "model_card.json").read_text())["model"]
    served = default_model_tag()
    text = text.replace(f"  fast: {held}\n", f"  fast: {served}\n", 1)
    return text.replace("  data: ", f"  data: measured with {held}, the same recipe on the train split; ", 1)


if __name__ == "__main__":
    raise SystemExit(main())
