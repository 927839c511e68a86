"""benchmarks/train_step.py: each variant trains what it says, and a run reports every variant
against the first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import train_step
from deployments.fast_tier.config import TrainConfig, embedded_encoder_dir
from deployments.fast_tier.training.fast_dropout import ATTENTION, FastDropout

TINY = TrainConfig(data_dir=Path("."), output_dir=Path("."), batch_size=2, window_tokens=16, window_stride=4)


def _moved(variant: train_step.Variant) -> set[str]:
    before = {n: p.detach().clone() for n, p in variant.model.named_parameters()}
    seconds = variant.step(*train_step.batch(TINY, 1))
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)  # forward, backward, optimiser
    return {n for n, p in variant.model.named_parameters() if not torch.equal(before[n], p)}


def test_frozen_bottom_layers_stay_and_the_rest_trains() -> None:
    moved = _moved(train_step.Variant("frozen-bottom-2", str(embedded_encoder_dir()), TINY))
    frozen = ("encoder.embeddings.", "encoder.encoder.layer.0.", "encoder.encoder.layer.1.")
    assert not [n for n in moved if n.startswith(frozen)]
    assert any(n.startswith("encoder.encoder.layer.2.") for n in moved)
    assert {"entity_head.weight", "modifier_head.weight"} <= moved


def test_the_default_trains_all_but_the_word_embeddings_and_the_variant_drops_attention_dropout() -> None:
    default = train_step.Variant("default", str(embedded_encoder_dir()), TINY)
    moved = _moved(default)
    assert "encoder.embeddings.word_embeddings.weight" not in moved  # the recipe's frozen word embeddings
    assert "encoder.embeddings.position_embeddings.weight" in moved
    assert any(n.startswith("encoder.encoder.layer.0.") for n in moved)
    layers = default.model.encoder.encoder.layer
    assert all(layer.attention.self.dropout.p > 0 for layer in layers)
    plain = train_step.Variant("no-attention-dropout", str(embedded_encoder_dir()), TINY)
    assert all(layer.attention.self.dropout.p == 0 for layer in plain.model.encoder.encoder.layer)


def test_the_default_steps_with_the_recipes_fast_dropout_and_torch_dropout_with_pytorchs() -> None:
    kinds = {}
    for name in ("default", "torch-dropout"):
        model = train_step.Variant(name, str(embedded_encoder_dir()), TINY).model
        dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        kinds[name] = ({type(m) for m in dropouts}, model.encoder.config._attn_implementation)
    assert kinds["default"] == ({FastDropout}, ATTENTION)
    assert kinds["torch-dropout"] == ({torch.nn.Dropout}, "sdpa")


def test_a_run_reports_every_variant_against_the_first() -> None:
    out = train_step.run(["default", "frozen-bottom-1"], rounds=1, threads=1, profile=False, cfg=TINY)
    assert out["batch"] == [2, 18] and set(out["variants"]) == {"default", "frozen-bottom-1"}
    assert out["variants"]["default"]["vs_default"] == 1.0
    for row in out["variants"].values():
        assert row["step_s"] > 0 and row["forward_s"] > 0 and row["backward_s"] > 0


def test_unknown_variants_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("default,bogus", "frozen-bottom-0", "frozen-bottom-x"):
        with pytest.raises(SystemExit) as exit_:
            train_step.main(["--variants", bad, "--rounds", "1"])
        assert exit_.value.code == 2 and "unknown variants" in capsys.readouterr().err
