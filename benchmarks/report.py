"""Shared bits of the benchmarks' reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clinie.scoring import Scores

HEADLINE = [(m, g) for m in ("strict", "relaxed") for g in ("entities", "modifiers", "relations")]


def headline_f1(scores: Scores) -> dict[str, float]:
    """Overall F1 per mode and group, e.g. `relaxed_entities`."""
    return {f"{m}_{g}": round(scores.f1(m, g), 4) for m, g in HEADLINE}  # type: ignore[arg-type]


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write a benchmark's JSON report (creating its folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return out
