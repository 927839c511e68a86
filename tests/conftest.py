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
