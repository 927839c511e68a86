"""Training's bf16 autocast: on where the CPU computes bf16 natively, and a warning where `bf16: on`
asks for it on a CPU that would emulate it (a step 20x slower: benchmarks/train_step.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from deployments.fast_tier.config import TrainConfig
from deployments.fast_tier.training import train


def _cfg(bf16: str) -> TrainConfig:
    return TrainConfig(data_dir=Path("."), output_dir=Path("."), bf16=bf16)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("native", "setting", "expected", "warns"),
    [
        (False, "auto", False, False),
        (False, "off", False, False),
        (False, "on", True, True),  # as asked, but said to be slow
        (True, "auto", True, False),
        (True, "on", True, False),
        (True, "off", False, False),
    ],
)
def test_bf16_where_native_and_a_warning_where_emulated(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    native: bool,
    setting: str,
    expected: bool,
    warns: bool,
) -> None:
    monkeypatch.setattr(train, "native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger=train.log.name):
        assert train.uses_bf16(_cfg(setting)) is expected
    assert any("no native bf16" in r.getMessage() for r in caplog.records) is warns
