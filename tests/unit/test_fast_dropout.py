"""training/fast_dropout.py: the cheaper dropout keeps PyTorch dropout's distribution, its
expectation and its gradient, changes nothing in eval mode, and switches back."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from deployments.fast_tier import features as F
from deployments.fast_tier.config import TrainConfig, embedded_encoder_dir
from deployments.fast_tier.training.fast_dropout import (
    ATTENTION,
    FastDropout,
    fast_dropout,
    keep_mask,
    use_fast_dropout,
)
from deployments.fast_tier.training.modeling import JointTagger, load_encoder


def _within(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_each_value_is_kept_with_probability_one_minus_p(p: float) -> None:
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of four: the last 64-bit draw is cut short
    keep = keep_mask((n,), p)
    assert keep.shape == (n,) and keep.dtype == torch.bool
    assert _within(keep.float().mean().item(), 1 - p, n)
    # Neighbours (often the four 16-bit parts of one draw) are independent: both dropped ~ p^2.
    both = (~keep[:-1] & ~keep[1:]).float().mean().item()
    assert _within(both, p * p, n)
    # No 16-bit lane of the draws is biased (random_() without its full range would bias every fourth).
    for lane in range(4):
        part = keep[lane : n - 3 : 4]
        assert _within(part.float().mean().item(), 1 - p, part.numel())


def test_the_same_seed_draws_the_same_mask_and_another_does_not() -> None:
    torch.manual_seed(7)
    a = keep_mask((64, 64), 0.1)
    torch.manual_seed(7)
    assert torch.equal(a, keep_mask((64, 64), 0.1))
    assert not torch.equal(a, keep_mask((64, 64), 0.1))


def test_dropout_keeps_the_expectation_and_its_gradient_is_the_mask() -> None:
    torch.manual_seed(1)
    x = torch.ones(400_000, requires_grad=True)
    y = fast_dropout(x, 0.1)
    kept = y != 0
    scale = 65536 / (65536 - round(0.1 * 65536))
    assert torch.allclose(y[kept], torch.full_like(y[kept], scale))
    assert abs(y.mean().item() - 1.0) < 0.005  # E[y] = x
    (y * torch.arange(y.numel())).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.arange(y.numel())[kept].float() * scale)


def test_eval_mode_and_p_zero_change_nothing_and_p_one_drops_everything() -> None:
    x = torch.randn(5, 7)
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    layer = FastDropout(0.3).eval()
    assert torch.equal(layer(x), x)


def _tagger() -> JointTagger:
    return JointTagger(load_encoder(str(embedded_encoder_dir())), len(F.ENTITY_TAGS), len(F.MODIFIER_TAGS))


def test_switching_a_tagger_over_and_back_leaves_its_eval_outputs_as_they_were() -> None:
    model = _tagger().eval()
    ids = torch.randint(1000, 20000, (3, 40))
    mask = torch.ones_like(ids)
    mask[2, 25:] = 0  # padding: the attention mask path matters
    with torch.no_grad():
        before = model(ids, mask)
    use_fast_dropout(model)
    assert model.encoder.config._attn_implementation == ATTENTION
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is FastDropout and not m.training for m in dropouts)
    with torch.no_grad():
        during = model(ids, mask)
    use_fast_dropout(model, False)
    assert model.encoder.config._attn_implementation == "sdpa"
    assert all(type(m) is nn.Dropout for m in model.modules() if isinstance(m, nn.Dropout))
    with torch.no_grad():
        after = model(ids, mask)
    for b, d, a in zip(before, during, after, strict=True):
        assert torch.allclose(b, d, atol=1e-5) and torch.equal(b, a)


def test_in_training_the_attention_probabilities_are_dropped_too() -> None:
    model = _tagger()
    use_fast_dropout(model)
    model.train()
    for m in model.modules():  # hidden dropouts off: whatever still varies is the attention's
        if isinstance(m, FastDropout):
            m.p = 0.0
    for layer in model.encoder.encoder.layer:
        layer.attention.self.dropout.p = 0.5
    ids = torch.randint(1000, 20000, (2, 16))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a, b = model(ids, mask)[0], model(ids, mask)[0]
    assert not torch.allclose(a, b)
    for layer in model.encoder.encoder.layer:
        layer.attention.self.dropout.p = 0.0
    with torch.no_grad():
        assert torch.allclose(model(ids, mask)[0], model(ids, mask)[0])


def test_the_setting_is_part_of_a_models_version_only_when_on() -> None:
    on = TrainConfig(data_dir=Path("."), output_dir=Path("."))
    off = on.model_copy(update={"fast_dropout": False})
    assert on.fast_dropout and on.version("h") != off.version("h")
    # Off, the version is computed as before the setting existed: older models keep their tags.
    skip = {"data_dir", "output_dir", "threads", "export_fp32", "keep_pytorch", "steps_of_train_split", "fast_dropout"}
    before = hashlib.sha256((off.model_dump_json(exclude=skip) + "h").encode()).hexdigest()[:10]
    assert off.version("h") == before


def test_switching_back_restores_the_attention_the_encoder_had() -> None:
    model = _tagger()
    model.encoder.set_attn_implementation("eager")
    use_fast_dropout(model)
    use_fast_dropout(model)  # twice: still restores what it had before the first
    assert model.encoder.config._attn_implementation == ATTENTION
    use_fast_dropout(model, False)
    assert model.encoder.config._attn_implementation == "eager"


@pytest.mark.parametrize("on", [True, False])
def test_training_fits_with_the_configured_dropout_and_hands_back_the_built_modules(on: bool) -> None:
    from deployments.fast_tier.training.train import _fit

    model = _tagger()
    cfg = TrainConfig(data_dir=Path("."), output_dir=Path("."), fast_dropout=on)
    seen: list[tuple[set[type], str]] = []

    def loss_of(batch: list[int]) -> torch.Tensor:
        kinds = {type(m) for m in model.modules() if isinstance(m, nn.Dropout)}
        seen.append((kinds, model.encoder.config._attn_implementation))
        ids = torch.randint(1000, 20000, (len(batch), 8))
        return model(ids, torch.ones_like(ids))[0].float().pow(2).mean()

    _fit(model, [8, 8], loss_of, total=2, batch_size=1, cfg=cfg, desc="test")
    assert seen == [({FastDropout}, ATTENTION) if on else ({nn.Dropout}, "sdpa")] * 2
    assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {nn.Dropout}
    assert model.encoder.config._attn_implementation == "sdpa" and not model.training
