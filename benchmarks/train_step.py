"""One training step of the fast tier, side by side: where it goes, and what the cheap ways to a
faster first run would change.

The first `make run` trains the default fast tier (480 steps of `batch_size` windows of
`window_tokens` word-pieces); on a 2-core CPU that is most of the first run. This times the
default recipe's step (the embedded encoder, word embeddings frozen, the checkpoint's dropout
rates, masks drawn by training/fast_dropout.py) beside variants of it, each its own model, in
interleaved rounds (each round times one step of every variant in turn; medians over rounds),
split into forward, backward and the optimiser:

- `torch-dropout`: PyTorch's own dropout (`bernoulli_` masks, SDPA attention), what the recipe
  trained with before `fast_dropout` (the same keep distribution from a quarter of the
  generator calls);
- `no-attention-dropout`: the encoder's attention-probability dropout at 0 (speed only;
  what it does to F1 needs a training run: README "How the fast tier works");
- `frozen-bottom-N`: the embeddings and the encoder's first N layers frozen (no backward below);
- `bf16` (asked for by name): bf16 autocast, which the recipe's `bf16: auto` turns on only where
  the CPU has native bf16; without it a step is many times slower.

Random word-piece ids in full windows (most training windows are full); the span-pair head is
left out (its share of a step is small). `--profile` adds PyTorch's operator table for the default.

    python -m benchmarks.train_step [--rounds 8] [--profile]
        [--variants default,torch-dropout,no-attention-dropout,frozen-bottom-2,bf16]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployments.fast_tier import features as F
from deployments.fast_tier.config import TrainConfig, embedded_encoder_dir
from deployments.fast_tier.training.fast_dropout import use_fast_dropout
from deployments.fast_tier.training.modeling import JointTagger, load_encoder
from deployments.fast_tier.training.train import native_bf16, optimiser

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("default", "torch-dropout", "no-attention-dropout", "frozen-bottom-2", "bf16")
DEFAULT_VARIANTS = VARIANTS[:4]
"""`bf16` only on request: without native bf16 one step takes minutes (measured 20x the default)."""


class Variant:
    """A model and its optimiser, set up as `name` says."""

    def __init__(self, name: str, encoder: str, cfg: TrainConfig):
        self.name = name
        enc = load_encoder(encoder)
        if name == "no-attention-dropout":
            for layer in enc.encoder.layer:  # type: ignore[union-attr]
                layer.attention.self.dropout.p = 0.0
        self.model = JointTagger(enc, len(F.ENTITY_TAGS), len(F.MODIFIER_TAGS), pair_head=False)
        use_fast_dropout(self.model, cfg.fast_dropout and name != "torch-dropout")  # as train_tagger does
        if name.startswith("frozen-bottom-"):
            frozen = [enc.embeddings, *enc.encoder.layer[: int(name.rsplit("-", 1)[1])]]  # type: ignore[union-attr,index]
            for module in frozen:
                module.requires_grad_(False)
        self.bf16 = name == "bf16"
        self.opt = optimiser(self.model, cfg)  # training's own: frozen word embeddings, two learning rates
        self.loss = torch.nn.CrossEntropyLoss()
        self.model.train()

    def step(self, ids: torch.Tensor, mask: torch.Tensor, ent: torch.Tensor, mod: torch.Tensor) -> tuple[float, ...]:
        """Seconds of forward, backward, optimiser."""
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            ent_logits, mod_logits, _, _ = self.model(ids, mask)
            loss = self.loss(ent_logits.flatten(0, 1).float(), ent) + self.loss(mod_logits.flatten(0, 1).float(), mod)
        t1 = time.perf_counter()
        self.opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return t1 - t0, t2 - t1, time.perf_counter() - t2


def batch(cfg: TrainConfig, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_size, cfg.window_tokens + 2)  # the window and its [CLS] / [SEP]
    ids = torch.randint(1000, 20000, shape, generator=g)
    ent = torch.randint(0, len(F.ENTITY_TAGS), (shape[0] * shape[1],), generator=g)
    mod = torch.randint(0, len(F.MODIFIER_TAGS), (shape[0] * shape[1],), generator=g)
    return ids, torch.ones_like(ids), ent, mod


def run(
    variants: list[str], rounds: int, threads: int | None, profile: bool, cfg: TrainConfig | None = None
) -> dict[str, Any]:
    """Median seconds a step per variant (`cfg`: the shapes and rates; default the default recipe's)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(13)
    cfg = cfg or TrainConfig(data_dir=Path("."), output_dir=Path("."))
    encoder = str(embedded_encoder_dir())
    models = [Variant(v, encoder, cfg) for v in variants]
    for m in models:  # warm-up: first-call allocations
        m.step(*batch(cfg, 0))
    times: dict[str, list[tuple[float, ...]]] = {m.name: [] for m in models}
    for r in range(rounds):
        data = batch(cfg, r + 1)
        for m in models:
            times[m.name].append(m.step(*data))
    base = float(np.median([sum(t) for t in times[variants[0]]]))
    rows = {}
    for name, ts in times.items():
        a = np.array(ts)
        step = float(np.median(a.sum(1)))
        rows[name] = {
            "step_s": round(step, 3),
            "forward_s": round(float(np.median(a[:, 0])), 3),
            "backward_s": round(float(np.median(a[:, 1])), 3),
            "optimiser_s": round(float(np.median(a[:, 2])), 3),
            f"vs_{variants[0]}": round(step / base, 3),
        }
    out: dict[str, Any] = {
        "batch": [cfg.batch_size, cfg.window_tokens + 2],
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "native_bf16": native_bf16(),
        "variants": rows,
    }
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            models[0].step(*batch(cfg, 99))
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
        out["profile_self_cpu_share"] = {e.key: round(e.self_cpu_time_total / total, 3) for e in top}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8, help="Steps of each variant timed (interleaved).")
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"Comma-separated, the first the baseline; of {', '.join(VARIANTS)}, frozen-bottom-N.",
    )
    p.add_argument("--threads", type=int, default=None, help="Torch threads (default: all cores, as training).")
    p.add_argument("--profile", action="store_true", help="Operator shares of one default step (torch.profiler).")
    p.add_argument("--output", default=str(RESULTS / "train_step.json"))
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS and not re.fullmatch(r"frozen-bottom-[1-9]\d*", v)]
    if unknown or not variants:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)} (or frozen-bottom-N)")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    out = run(variants, args.rounds, args.threads, args.profile)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
