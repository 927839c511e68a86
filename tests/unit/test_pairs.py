"""The span-pair relation head (deployments/fast_tier/pairs.py): candidate indexing over word-pieces,
distance buckets, and the numpy forward pass against the torch module it is exported from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinie.schema import is_allowed_pair
from clinie.windows import split_sentences
from deployments.fast_tier import features as F
from deployments.fast_tier.pairs import (
    N_DISTANCE_BUCKETS,
    PairHead,
    between_means,
    distance_bucket,
    pair_index,
    span_tokens,
)
from deployments.fast_tier.training.modeling import SpanPairHead


def test_distance_buckets_are_signed_logarithmic_and_bounded():
    d = np.array([0, 1, -1, 2, 3, 4, 7, 8, -8, 63, 64, 10_000, -10_000])
    assert distance_bucket(d).tolist() == [7, 8, 6, 9, 9, 10, 10, 11, 3, 13, 14, 14, 0]
    assert distance_bucket(np.arange(-500, 500)).max() == N_DISTANCE_BUCKETS - 1


def test_span_tokens_cover_each_span_by_its_first_and_last_piece():
    # word-pieces of "chest pain denies" : "chest" "pa" "##in" "denies"
    starts = np.array([0, 6, 8, 11])
    ends = np.array([5, 8, 10, 17])
    first, last = span_tokens(starts, ends, [(0, 10), (6, 10), (11, 17), (7, 9)])
    assert first.tolist() == [0, 1, 3, 1]
    assert last.tolist() == [2, 2, 3, 2]


def test_pair_index_keeps_the_allowed_same_sentence_pairs_in_order():
    text = "Patient denies chest pain. Aspirin 81 mg daily."
    ents = [("problem", 15, 25), ("drug", 27, 34)]
    mods = [("negation", 8, 14), ("strength", 35, 40), ("frequency", 41, 46)]
    cands = F.candidate_pairs(ents, mods, split_sentences(text))
    assert all(is_allowed_pair(ents[c.entity][0], mods[c.modifier][0]) for c in cands)
    assert [(c.entity, c.modifier) for c in cands] == [(0, 0), (1, 1), (1, 2)]
    offsets = [(0, 7), (8, 14), (15, 20), (21, 25), (25, 26), (27, 34), (35, 37), (38, 40), (41, 46), (46, 47)]
    ix = pair_index(offsets, ents, mods, cands)
    assert ix.e_first.tolist() == [2, 5, 5] and ix.e_last.tolist() == [3, 5, 5]
    assert ix.m_first.tolist() == [1, 6, 8] and ix.m_last.tolist() == [1, 7, 8]
    assert ix.bucket.tolist() == distance_bucket(np.array([-1, 1, 3])).tolist()
    assert len(pair_index(offsets, ents, mods, [])) == 0


@pytest.mark.parametrize("context", [True, False], ids=["with-between-context", "boundaries-only"])
def test_numpy_head_matches_the_torch_head_it_was_exported_from(tmp_path, context: bool):
    torch.manual_seed(0)
    hidden = 24
    head = SpanPairHead(hidden, type_dim=8, inner=16, context=context).eval()
    states = torch.randn(1, 10, hidden)
    offsets = [(i * 3, i * 3 + 2) for i in range(10)]
    ents = [("problem", 0, 5), ("drug", 12, 14)]
    mods = [("negation", 6, 8), ("dosage", 15, 17), ("severity", 27, 29)]
    from deployments.fast_tier.features import PairCandidate

    cands = [PairCandidate(0, 0, 0), PairCandidate(0, 2, 0), PairCandidate(1, 1, 0)]
    ix = pair_index(offsets, ents, mods, cands)
    index = {k: torch.from_numpy(v) for k, v in ix.arrays().items()}
    with torch.no_grad():
        expected = torch.sigmoid(head(states, torch.zeros(len(cands), dtype=torch.int64), index)).numpy()
    head.numpy().save(tmp_path / "head.npz")
    got = PairHead.load(tmp_path / "head.npz").probs(states[0].numpy(), ix)
    assert got == pytest.approx(expected, abs=1e-5)
    assert PairHead.load(tmp_path / "head.npz").probs(states[0].numpy(), pair_index(offsets, ents, mods, [])).shape == (
        0,
    )


def test_between_means_are_the_means_of_the_rows_between_and_zero_when_none():
    rng = np.random.default_rng(3)
    for rows in (1, 2, 7, 300):
        states = rng.standard_normal((rows, 16)).astype(np.float32)
        lo = rng.integers(0, rows + 1, 200)
        hi = np.maximum(rng.integers(0, rows + 1, 200), lo)
        # the edges: an empty range at either end, a range ending at the last row, all rows
        lo = np.append(lo, [0, rows, rows - 1, 0])
        hi = np.append(hi, [0, rows, rows, rows])
        got = between_means(states, lo, hi)
        want = np.stack(
            [states[a:b].mean(0) if b > a else np.zeros(16, np.float32) for a, b in zip(lo, hi, strict=True)]
        )
        assert got.dtype == np.float32 and got.shape == (len(lo), 16)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert between_means(states, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0, 16)
