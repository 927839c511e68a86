"""The corpus split rule shared by the fast tier's training, the LLM tier's fine-tuning and the
benchmarks, so every one of them holds out the same dev notes.

Pure Python: the core imports no model library.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from clinie.brat import Document


def split_corpus(docs: Sequence[Document], dev_size: int, seed: int) -> tuple[list[Document], list[Document]]:
    """A fixed split: notes sorted by name, shuffled with `seed`, the first `dev_size` are dev."""
    ordered = sorted(docs, key=lambda d: d.name)
    random.Random(seed).shuffle(ordered)
    dev = sorted(ordered[:dev_size], key=lambda d: d.name)
    train = sorted(ordered[dev_size:], key=lambda d: d.name)
    return train, dev
