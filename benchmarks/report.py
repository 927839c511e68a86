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


# The instruction sets that decide how fast fp32 and int8 kernels run (oneDNN, MLAS): two machines
# "of the same kind" measured PyTorch fp32 40-50% apart, so speed reports say which CPU they ran on.
_VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """This machine's CPU model and the vector flags it reports (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    lines = text.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags_line = next((line for line in lines if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[1].split()) if ":" in flags_line else set()
    return {"model": model, "vector_flags": [f for f in _VECTOR_FLAGS if f in flags]}


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write a benchmark's JSON report (creating its folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return out
