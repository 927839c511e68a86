"""Shared test fixtures: paths to the read-only shared data (tests that need it skip without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TRAIN_DIR = SHARED / "data" / "kiwi-mtsamples" / "train"
UNLABELED = SHARED / "data" / "mtsamples-unlabeled" / "notes.jsonl"


@pytest.fixture(scope="session")
def train_dir() -> Path:
    if not (TRAIN_DIR.is_dir() and any(TRAIN_DIR.glob("*.ann"))):
        pytest.skip(f"annotated notes not found at {TRAIN_DIR} (../shared beside the repo)")
    return TRAIN_DIR


@pytest.fixture(scope="session")
def tiny_model(train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast tier trained for a minute on 10 notes: real files, real ONNX, poor quality.

    `CLINIE_TEST_TINY_MODEL=DIR` reuses (or first writes) one across local runs; CI trains afresh."""
    import os

    from deployments.fast_tier.config import TrainConfig
    from deployments.fast_tier.training.train import train

    reuse = os.environ.get("CLINIE_TEST_TINY_MODEL")
    if reuse and (Path(reuse) / "fast_tier.json").exists():
        return Path(reuse)
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("fast") / "model"
    cfg = TrainConfig(
        data_dir=train_dir,
        output_dir=out,
        max_notes=10,
        dev_size=2,
        tagger_epochs=30,
        relation_epochs=3,
        max_steps=70,
    )
    return train(cfg)


@pytest.fixture(scope="session")
def clinie_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CLINIE_HOME for the session: the default LLM is converted into it once."""
    return tmp_path_factory.mktemp("clinie_home")
