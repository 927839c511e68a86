"""Dropout masks at a fraction of PyTorch's CPU cost, for training (the same distribution).

PyTorch's CPU dropout draws its keep mask with `bernoulli_`, one generator call per value: on
this project's training step (`python -m benchmarks.train_step --profile`) `bernoulli_` was 15.5%
of the step, most of it the attention probabilities' dropout (16 x 12 x 128 x 128 values a
layer). Here the mask comes from 64-bit draws of the same generator, each cut into four 16-bit
uniforms u (keep where u >= k, k = round(p * 65536)): a quarter of the generator calls for the
same independent Bernoulli keep of each value. Kept values are scaled by 65536 / (65536 - k),
the exact inverse of the keep rate drawn, so the expectation is unchanged; p is resolved to
1/65536 (0.1 becomes 0.100006).

Two parts, both for training only (in eval mode nothing is dropped and outputs are unchanged):
- `FastDropout`, an `nn.Dropout` in its place, for the hidden-state and heads' dropouts;
- the attention probabilities' dropout, which Transformers applies inside its attention function
  (PyTorch's scaled-dot-product attention on CPU falls back to its math path for dropout, which
  draws with `bernoulli_` too): an eager attention registered under `ATTENTION` whose dropout is
  `fast_dropout`.
`use_fast_dropout(model)` installs both; training switches a model over for its fit and back
(`use_fast_dropout(model, False)`: `nn.Dropout` and the attention the encoder had) before export
and saving, so nothing after training sees it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

log = logging.getLogger(__name__)

ATTENTION = "clinie_fast_dropout"
"""The attention implementation's registered name (Transformers' `attn_implementation`)."""
_LEVELS = 65536  # the uniforms are 16-bit


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | None = None) -> torch.Tensor:
    """A bool mask, each value kept independently with probability 1 - p (to 1/65536), drawn
    from torch's default generator (so `torch.manual_seed` makes it reproducible)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    # The full signed range: random_() alone draws [0, 2**63), which would leave every fourth
    # 16-bit part without its top bit (measured: a keep rate of 0.925 for p = 0.1).
    words.random_(-(2**63), 2**63 - 1)
    uniforms = words.view(torch.int16)[:n].view(shape)
    return uniforms >= round(p * _LEVELS) - _LEVELS // 2


class _ScaledMask(torch.autograd.Function):
    """x * m, m the keep mask as values (0 or the scale): one product forward, one backward
    (a bool mask would be converted to floats again in each)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scaled_mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scaled_mask)
        return x * scaled_mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scaled_mask,) = ctx.saved_tensors
        return grad * scaled_mask, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`nn.functional.dropout(x, p, training)` with the cheaper mask (see the module docstring)."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    scale = _LEVELS / (_LEVELS - round(p * _LEVELS))  # the inverse of the keep rate drawn
    scaled_mask = torch.where(keep_mask(x.shape, p, x.device), scale, 0.0).to(x.dtype)
    return _ScaledMask.apply(x, scaled_mask)


class FastDropout(nn.Dropout):
    """`nn.Dropout` with the cheaper mask; same `p`, same train / eval behaviour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def fast_dropout_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformers' eager BERT attention, its probabilities dropped by `fast_dropout`."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = fast_dropout(weights.softmax(dim=-1), dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION, fast_dropout_attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)  # an additive float mask, as eager attention takes


def use_fast_dropout(model: nn.Module, on: bool = True) -> None:
    """Switch every dropout of `model` (the encoder's hidden and attention dropouts, the heads')
    to the cheaper mask, or back (`on=False`: `nn.Dropout`, and the attention the encoder had,
    `sdpa` as `load_encoder` builds it). Eval-mode outputs are the same either way."""
    for parent in list(model.modules()):
        for attr, sub in list(parent.named_children()):
            if isinstance(sub, nn.Dropout) and (type(sub) is FastDropout) != on:
                swapped = (FastDropout if on else nn.Dropout)(sub.p)
                setattr(parent, attr, swapped.train(sub.training))  # a new module starts in train mode
    for module in model.modules():
        if not isinstance(module, PreTrainedModel):
            continue
        current = module.config._attn_implementation
        if not on:
            module.set_attn_implementation(getattr(module, "_attention_before_fast_dropout", current))
        elif current != ATTENTION:
            try:
                module.set_attn_implementation(ATTENTION)
            except (ValueError, NotImplementedError) as exc:  # an encoder family without the interface
                log.warning("%s: attention dropout stays PyTorch's (%s)", type(module).__name__, exc)
                continue
            module._attention_before_fast_dropout = current
