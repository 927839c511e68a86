"""Offsets through tokenization, windows and BIO decoding; relation candidates and markers."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinie.schema import is_allowed_pair
from clinie.windows import split_sentences
from deployments.fast_tier import features as F
from deployments.fast_tier.config import embedded_encoder_dir


@pytest.fixture(scope="module")
def tok():
    return F.load_tokenizer(str(embedded_encoder_dir() / "tokenizer.json"))


WORDS = ["chest", "pain", "Café", "≥", "5", "mg", "b.i.d.", "😀", "HbA1c", "x-ray", "no", "fever", "\x07"]
SEPS = [" ", "  ", "\n", "\r\n", ", ", "\t"]


@st.composite
def note_with_spans(draw):
    n = draw(st.integers(1, 40))
    pieces, bounds, pos = [], [], 0
    for i in range(n):
        w = draw(st.sampled_from(WORDS))
        bounds.append((pos, pos + len(w), w))
        pieces.append(w)
        pos += len(w)
        if i < n - 1:
            sep = draw(st.sampled_from(SEPS))
            pieces.append(sep)
            pos += len(sep)
    text = "".join(pieces)
    spans, i = [], 0
    while i < n:
        length = draw(st.integers(0, 3))
        if length and bounds[i][2] != "\x07":
            j = min(n, i + length)
            if all(b[2] != "\x07" for b in bounds[i:j]):
                spans.append((draw(st.sampled_from(["problem", "drug", "test"])), bounds[i][0], bounds[j - 1][1]))
            i = j
        else:
            i += 1
    return text, spans


@settings(max_examples=60, deadline=None)
@given(note_with_spans(), st.integers(4, 12), st.data())
def test_bio_round_trip_through_windows_gives_exact_offsets(tok, case, window, data):
    text, spans = case
    stride = data.draw(st.integers(0, window - 1))
    note = F.encode_note(tok, text, window, stride)
    tags, collisions = F.bio_tags(note.offsets, spans, F.ENTITY_TAGS)
    assert collisions == 0
    # Predictions made per window and stitched back by ownership, as the engine does.
    probs = np.zeros((len(note.ids), len(F.ENTITY_TAGS)), np.float32)
    for w in note.windows:
        for t in range(w.own_start, w.own_end):
            probs[t, tags[t]] = 1.0
    got = [(s.label, s.start, s.end) for s in F.decode_spans(probs, note.offsets, F.ENTITY_TAGS, note.words)]
    assert got == sorted(spans, key=lambda s: s[1])
    for _, s, e in got:
        assert text[s:e].strip() == text[s:e] and text[s:e]


@given(st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_viterbi_never_emits_an_orphan_inside_tag(n, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(F.MODIFIER_TAGS)), size=n).astype(np.float32)
    path = [F.MODIFIER_TAGS[i] for i in F.viterbi(probs, F.MODIFIER_TAGS)]
    for prev, cur in zip(["O", *path], path, strict=False):
        if cur.startswith("I-"):
            assert prev in (f"B-{cur[2:]}", cur)


def _is_valid_bio(path: Sequence[int], tags: list[str]) -> bool:
    names = ["O", *(tags[i] for i in path)]
    return all(not c.startswith("I-") or a in (f"B-{c[2:]}", c) for a, c in itertools.pairwise(names))


def _path_score(probs: np.ndarray, path: Sequence[int]) -> float:
    logp = np.log(np.clip(probs, 1e-9, 1.0))
    return float(sum(logp[t, i] for t, i in enumerate(path)))


def _best_valid_score(probs: np.ndarray, tags: list[str]) -> float:
    """The score of the best valid BIO sequence, by trying every sequence (short inputs only)."""
    seqs = itertools.product(range(len(tags)), repeat=len(probs))
    return max(_path_score(probs, seq) for seq in seqs if _is_valid_bio(seq, tags))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.sampled_from([0.05, 0.3, 1.0]), st.integers(0, 2**31 - 1))
def test_viterbi_finds_a_best_valid_path(n, peak, seed):
    # against an exhaustive search; peaked probabilities (small Dirichlet concentration) make the
    # per-token best tags invalid often and put "cuts" (every B-X at least as likely as its I-X)
    # in the middle of a sequence, where the decoding splits
    rng = np.random.default_rng(seed)
    tags = ["O", "B-A", "I-A", "B-B", "I-B"]
    probs = rng.dirichlet(np.full(len(tags), peak), size=n)
    path = F.viterbi(probs, tags)
    assert _is_valid_bio(path, tags)
    assert _path_score(probs, path) == pytest.approx(_best_valid_score(probs, tags))


def test_spans_are_widened_to_whole_words(tok):
    text = "gastroesophageal reflux noted"
    note = F.encode_note(tok, text, 50, 0)
    tags = ["O"] * len(note.ids)
    tags[0], tags[1] = "B-problem", "I-problem"  # only the first two word-pieces of the first word
    probs = np.zeros((len(tags), len(F.ENTITY_TAGS)), np.float32)
    for t, tag in enumerate(tags):
        probs[t, F.ENTITY_TAGS.index(tag)] = 1.0
    (span,) = F.decode_spans(probs, note.offsets, F.ENTITY_TAGS, note.words)
    assert text[span.start : span.end] == "gastroesophageal"
    (raw,) = F.decode_spans(probs, note.offsets, F.ENTITY_TAGS)
    assert text[raw.start : raw.end] != "gastroesophageal"


def test_overlapping_spans_keep_the_longer_and_count_the_other(tok):
    text = "left knee pain today"
    note = F.encode_note(tok, text, 50, 0)
    tags, collisions = F.bio_tags(note.offsets, [("problem", 0, 14), ("problem", 5, 9)], F.ENTITY_TAGS)
    assert collisions == 1
    assert [F.ENTITY_TAGS[t] for t in tags] == ["B-problem", "I-problem", "I-problem", "O"]


def test_candidate_pairs_are_allowed_and_within_a_sentence():
    text = "Denies chest pain. Aspirin 81 mg daily."
    sents = split_sentences(text)
    ents = [("problem", 7, 17), ("drug", 19, 26)]
    mods = [("negation", 0, 6), ("strength", 27, 32), ("frequency", 33, 38)]
    pairs = F.candidate_pairs(ents, mods, sents)
    got = {(ents[p.entity][0], mods[p.modifier][0]) for p in pairs}
    assert got == {("problem", "negation"), ("drug", "strength"), ("drug", "frequency")}
    assert all(is_allowed_pair(ents[p.entity][0], mods[p.modifier][0]) for p in pairs)


@pytest.mark.parametrize(
    ("entity", "modifiers"),
    [
        (("problem", 10, 19), [("bodyloc", 5, 9)]),
        (("problem", 0, 14), [("bodyloc", 0, 9), ("severity", 15, 18)]),
        (("drug", 0, 4), [("route", 4, 8), ("form", 4, 8)]),
    ],
)
def test_markers_point_at_their_tokens(tok, entity, modifiers):
    text = "left knee pain and more words here"
    sent = split_sentences(text)[0]
    marked = F.marked_text(text, sent, entity, modifiers, 80)
    s, e_char, m_chars = marked
    assert s[e_char] == "@" and all(s[c] == "#" for c in m_chars)
    special = F.SpecialIds.of(tok)
    ids, e_pos, m_pos = F.relation_inputs(tok, special, marked, 64)
    assert ids[e_pos] == tok.token_to_id("@") and all(ids[p] == tok.token_to_id("#") for p in m_pos)
    assert ids[0] == special.cls and ids[-1] == special.sep
    # Each modifier's type word follows its own marker.
    for (mtype, _, _), c in zip(modifiers, m_chars, strict=True):
        assert s[c:].startswith(f"# ^ {mtype} ^ ")


def test_groups_split_when_candidates_do_not_fit(tok):
    filler = " ".join(["word"] * 30)
    text = f"denies {filler} fever {filler} no word word mild"
    sents = split_sentences(text)
    fever = text.index("fever")
    ents = [("problem", fever, fever + 5)]
    mods = [
        ("negation", 0, 6),
        ("negation", text.index(" no ") + 1, text.index(" no ") + 3),
        ("severity", text.index("mild"), text.index("mild") + 4),
    ]
    special = F.SpecialIds.of(tok)
    groups, skipped = F.group_inputs(tok, special, text, sents, ents, mods, 10_000, 64)
    assert skipped == 0 and len(groups) > 1
    assert sorted(m for g in groups for m in g.modifiers) == [0, 1, 2]
    for g in groups:
        assert len(g.ids) <= 64
        assert g.ids[g.entity_pos] == tok.token_to_id("@")
        assert all(g.ids[p] == tok.token_to_id("#") for p in g.modifier_pos)
    # A pair further apart than the budget is counted, not silently kept or cut.
    far = f"denies {' '.join(['word'] * 200)} fever"
    f_at = far.index("fever")
    groups, skipped = F.group_inputs(
        tok, special, far, split_sentences(far), [("problem", f_at, f_at + 5)], [("negation", 0, 6)], 10_000, 64
    )
    assert groups == [] and skipped == 1


def _plain_viterbi(probs: np.ndarray, tags: list[str]) -> list[int]:
    """The textbook recursion over the whole sequence, no shortcuts: the reference."""
    n = len(tags)
    allowed = np.array([[not c.startswith("I-") or a in (f"B-{c[2:]}", c) for c in tags] for a in tags])
    trans = np.where(allowed, 0.0, -np.inf)
    start = np.array([0.0 if not c.startswith("I-") else -np.inf for c in tags])
    logp = np.log(np.clip(probs, 1e-9, 1.0))
    score, back = logp[0] + start, np.zeros((len(probs), n), dtype=np.int64)
    for t in range(1, len(probs)):
        cand = score[:, None] + trans
        back[t] = cand.argmax(axis=0)
        score = cand.max(axis=0) + logp[t]
    path = [int(score.argmax())]
    for t in range(len(probs) - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 400), st.sampled_from([0.05, 0.2, 1.0]), st.integers(0, 2**31 - 1))
def test_viterbi_matches_the_plain_recursion_on_long_sequences(n, peak, seed):
    # long peaked sequences have many invalid stretches of different lengths, decoded in lockstep
    rng = np.random.default_rng(seed)
    tags = list(F.MODIFIER_TAGS)
    probs = rng.dirichlet(np.full(len(tags), peak), size=n).astype(np.float32)
    path, ref = F.viterbi(probs, tags), _plain_viterbi(probs, tags)
    assert _is_valid_bio(path, tags)
    assert _path_score(probs, path) == pytest.approx(_path_score(probs, ref), rel=1e-6, abs=1e-6)
