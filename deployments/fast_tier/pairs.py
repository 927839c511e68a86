"""The one-pass relation head: (entity, modifier) pairs scored from the tagger's own token states.

The tagger's encoder pass already gives every word-piece a contextual state. A pair is scored
from the states at its two spans' first and last word-pieces, the mean state of the word-pieces
between the two spans (zero when they touch), the two span types and the signed word-piece
distance between them (log-bucketed), through a small MLP: no second encoder pass,
no marked copy of the sentence per entity. This module holds what serving needs (no torch):
the candidate indexing and the head's forward pass in numpy; training has the same head as a
torch module (training/modeling.py: SpanPairHead) and writes its weights here (`pair_head.npz`).

Candidates are exactly the marker path's: allowed-type pairs whose spans start in the same
sentence (features.candidate_pairs), so the 22 allowed pairs and the sentence rule hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from clinie.schema import ENTITY_TYPES, MODIFIER_TYPES
from deployments.fast_tier.features import PairCandidate

PAIR_HEAD_FILE = "pair_head.npz"
MAX_LOG_DISTANCE = 7  # |distance| buckets: 0, 1, 2-3, 4-7, ..., 32-63, 64+
N_DISTANCE_BUCKETS = 2 * MAX_LOG_DISTANCE + 1
POSITIONS = ("e_first", "e_last", "m_first", "m_last")  # the PairIndex fields that are word-piece positions
ENTITY_INDEX = {t: i for i, t in enumerate(ENTITY_TYPES)}
MODIFIER_INDEX = {t: i for i, t in enumerate(MODIFIER_TYPES)}


def distance_bucket(d: np.ndarray) -> np.ndarray:
    """Signed log2 bucket of word-piece distances (modifier start - entity start), 0..14."""
    d = np.asarray(d, dtype=np.int64)
    mag = np.minimum(np.floor(np.log2(np.maximum(np.abs(d), 1))).astype(np.int64) + 1, MAX_LOG_DISTANCE)
    mag = np.where(d == 0, 0, mag)
    return np.sign(d) * mag + MAX_LOG_DISTANCE


@dataclass
class PairIndex:
    """Where each candidate pair's spans are (word-piece positions) and what they are."""

    e_first: np.ndarray
    e_last: np.ndarray
    m_first: np.ndarray
    m_last: np.ndarray
    e_type: np.ndarray
    m_type: np.ndarray
    bucket: np.ndarray

    def __len__(self) -> int:
        return len(self.e_first)

    def shifted(self, by: int) -> PairIndex:
        """The same pairs with positions moved by `by` (a window's [CLS] and start)."""
        return replace(self, **{k: getattr(self, k) + by for k in POSITIONS})

    def select(self, keep: np.ndarray) -> PairIndex:
        """The pairs where `keep` (a boolean mask or indices) says so."""
        return PairIndex(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field by name, and the between-spans range (`lo`, `hi`): what the torch head reads."""
        lo, hi = between(self)
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "lo": lo, "hi": hi}


def span_tokens(
    starts: np.ndarray, ends: np.ndarray, spans: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """First and last word-piece of each character span (`starts`/`ends`: the pieces' offsets,
    sorted): the first piece ending after the span's start, the last starting before its end."""
    lo = np.array([s for s, _ in spans], dtype=np.int64)
    hi = np.array([e for _, e in spans], dtype=np.int64)
    first = np.searchsorted(ends, lo, side="right")
    last = np.searchsorted(starts, hi, side="left") - 1
    top = max(len(starts) - 1, 0)
    first = np.clip(first, 0, top)
    return first, np.clip(np.maximum(last, first), 0, top)


def pair_index(
    offsets: Sequence[tuple[int, int]],
    entities: Sequence[tuple[str, int, int]],
    modifiers: Sequence[tuple[str, int, int]],
    candidates: Sequence[PairCandidate],
) -> PairIndex:
    """Word-piece positions, types and distance buckets of `candidates` in a note tokenized with
    `offsets` (entities and modifiers as (label, start, end))."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    e_first, e_last = span_tokens(off[:, 0], off[:, 1], [(s, e) for _, s, e in entities])
    m_first, m_last = span_tokens(off[:, 0], off[:, 1], [(s, e) for _, s, e in modifiers])
    ei = np.array([c.entity for c in candidates], dtype=np.int64)
    mi = np.array([c.modifier for c in candidates], dtype=np.int64)
    ef, mf = e_first[ei] if len(ei) else ei, m_first[mi] if len(mi) else mi
    return PairIndex(
        e_first=ef,
        e_last=e_last[ei] if len(ei) else ei,
        m_first=mf,
        m_last=m_last[mi] if len(mi) else mi,
        e_type=np.array([ENTITY_INDEX[entities[c.entity][0]] for c in candidates], dtype=np.int64),
        m_type=np.array([MODIFIER_INDEX[modifiers[c.modifier][0]] for c in candidates], dtype=np.int64),
        bucket=distance_bucket(mf - ef),
    )


def between(ix: PairIndex) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi): the word-pieces strictly between each pair's two spans (empty when they touch or
    overlap)."""
    lo = np.minimum(ix.e_last, ix.m_last) + 1
    hi = np.maximum(ix.e_first, ix.m_first)
    return lo, np.maximum(hi, lo)


def between_means(states: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean state of rows [lo, hi) for each pair (zeros where the range is empty; lo <= hi).

    One `np.add.reduceat` over the interleaved bounds sums only the rows between each pair's
    spans (a few per pair: pairs lie within a sentence), where a prefix sum over the whole note
    touched every row of it; on the dev notes that prefix sum was the head's costliest step."""
    if len(lo) == 0:
        return np.zeros((0, states.shape[1]), np.float32)
    # one zero row past the end: every bound (at most len(states)) is a valid index
    padded = np.concatenate([states, np.zeros((1, states.shape[1]), states.dtype)])
    bounds = np.empty(2 * len(lo), np.int64)
    bounds[0::2], bounds[1::2] = lo, hi
    sums = np.add.reduceat(padded, bounds, axis=0)[0::2]
    sums[hi <= lo] = 0.0  # reduceat gives row `lo` for an empty range
    return (sums / np.maximum(hi - lo, 1)[:, None]).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    """tanh-approximated GELU, as the torch head uses (nn.GELU(approximate="tanh")); in place on
    a temporary, `x` itself is left alone."""
    inner = x * x
    inner *= 0.044715 * 0.7978845608028654
    inner += 0.7978845608028654
    inner *= x
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= x
    inner *= 0.5
    return inner


@dataclass
class PairHead:
    """The trained head's weights (see training/modeling.py: SpanPairHead) and its forward pass."""

    entity_type: np.ndarray  # (n entity types, d)
    modifier_type: np.ndarray  # (n modifier types, d)
    distance: np.ndarray  # (N_DISTANCE_BUCKETS, d)
    w1: np.ndarray  # ((4 or 5) * hidden + 3 * d, inner): 5 with the between-spans context
    b1: np.ndarray
    w2: np.ndarray  # (inner,)
    b2: np.ndarray  # ()

    @classmethod
    def load(cls, path: Path) -> PairHead:
        with np.load(path) as z:
            return cls(**{k: z[k].astype(np.float32) for k in cls.__dataclass_fields__})

    def save(self, path: Path) -> None:
        np.savez(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    def probs(self, states: np.ndarray, idx: PairIndex) -> np.ndarray:
        """Probability that each pair is related, from one note's word-piece states (T, hidden).

        The first layer is linear in its concatenated input, so it is applied per part, not per
        pair: each distinct span boundary's state is projected once (the spans of a note are far
        fewer than its pairs), the type and distance embeddings are projected tables, and a pair's
        pre-activation is a sum of rows. Same result as the concatenated form, in a fraction of
        the multiply-adds."""
        if len(idx) == 0:
            return np.zeros(0, np.float32)
        hidden = states.shape[1]
        d = self.entity_type.shape[1]
        blocks = (self.w1.shape[0] - 3 * d) // hidden  # 4, or 5 with the between-spans context
        w = self.w1
        pre = self.b1.astype(np.float32)
        for block, pos in enumerate((idx.e_first, idx.e_last, idx.m_first, idx.m_last)):
            rows, where = np.unique(pos, return_inverse=True)
            pre = pre + (states[rows] @ w[block * hidden : (block + 1) * hidden])[where.reshape(-1)]
        if blocks == 5:
            pre = pre + between_means(states, *between(idx)) @ w[4 * hidden : 5 * hidden]
        base = blocks * hidden
        for k, (table, ix) in enumerate(
            ((self.entity_type, idx.e_type), (self.modifier_type, idx.m_type), (self.distance, idx.bucket))
        ):
            pre = pre + (table @ w[base + k * d : base + (k + 1) * d])[ix]
        logit = gelu(pre) @ self.w2 + self.b2
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
