"""Pre- and post-processing shared by training and inference (no torch here).

- Notes are tokenized whole with offsets, then cut into overlapping token windows
  (`clinie.windows.token_windows`): nothing is truncated.
- Tags are BIO per word-piece; decoding is a constrained Viterbi over the tag probabilities, so
  an `I-x` never follows anything but `B-x`/`I-x`, and span offsets come from token offsets.
- Relation inputs mark both arguments in the sentence with typed punctuation markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from clinie.analysis import DecodedSpan
from clinie.schema import ENTITY_TYPES, MODIFIER_TYPES, is_allowed_pair
from clinie.windows import Sentence, TokenWindow, sentence_index, token_windows

ENTITY_TAGS: tuple[str, ...] = ("O", *(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")))
MODIFIER_TAGS: tuple[str, ...] = ("O", *(f"{p}-{t}" for t in MODIFIER_TYPES for p in ("B", "I")))


def load_tokenizer(path: str) -> Tokenizer:
    """A `tokenizer.json` with truncation and padding off (windows are made here)."""
    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    return tok


@dataclass
class SpecialIds:
    """Ids of the tokens wrapped around every window."""

    cls: int
    sep: int
    pad: int

    @classmethod
    def of(cls, tok: Tokenizer) -> SpecialIds:
        ids = [tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
        if any(i is None for i in ids):
            raise ValueError("tokenizer has no [CLS]/[SEP]/[PAD] token; a BERT-family tokenizer is required")
        return cls(*ids)  # type: ignore[arg-type]


@dataclass
class EncodedNote:
    """A note's word-pieces with character offsets (tokens that cover no character are dropped)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    words: list[int] = field(default_factory=list)  # pre-tokenizer word index of each word-piece
    windows: list[TokenWindow] = field(default_factory=list)


def encode_note(tok: Tokenizer, text: str, window_tokens: int, stride: int) -> EncodedNote:
    enc = tok.encode(text, add_special_tokens=False)
    ids, offsets, words = [], [], []
    for i, (s, e), w in zip(enc.ids, enc.offsets, enc.word_ids, strict=True):
        if e > s:
            ids.append(i)
            offsets.append((s, e))
            words.append(-1 if w is None else w)
    windows = token_windows(len(ids), window_tokens, stride)
    return EncodedNote(ids=ids, offsets=offsets, words=words, windows=windows)


def window_inputs(note: EncodedNote, window: TokenWindow, special: SpecialIds) -> list[int]:
    return [special.cls, *note.ids[window.start : window.end], special.sep]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (input_ids, attention_mask) as int64."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def bio_tags(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[str, int, int]], tags: Sequence[str]
) -> tuple[list[int], int]:
    """Tag indices per token for `spans` (label, start, end); returns (tags, spans that collided).

    A token belongs to a span when their character ranges overlap. When spans of one group
    overlap, the longer one wins (it was sorted first) and the other is counted as a collision.
    """
    index = {t: i for i, t in enumerate(tags)}
    out = [0] * len(offsets)
    starts = [s for s, _ in offsets]
    collisions = 0
    for label, start, end in sorted(spans, key=lambda s: (-(s[2] - s[1]), s[1])):
        lo = int(np.searchsorted(starts, start, side="right")) - 1
        lo = max(lo, 0)
        covered = []
        i = lo
        while i < len(offsets) and offsets[i][0] < end:
            if offsets[i][1] > start:
                covered.append(i)
            i += 1
        if not covered:
            continue
        if any(out[i] != 0 for i in covered):
            collisions += 1
            continue
        out[covered[0]] = index[f"B-{label}"]
        for i in covered[1:]:
            out[i] = index[f"I-{label}"]
    return out, collisions


def _allowed_transitions(tags: Sequence[str]) -> np.ndarray:
    n = len(tags)
    allowed = np.ones((n, n), dtype=bool)
    for j, t in enumerate(tags):
        if t.startswith("I-"):
            for i, prev in enumerate(tags):
                allowed[i, j] = prev in (f"B-{t[2:]}", t)
    return allowed


_CONSTRAINTS: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _constraints(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A BIO tag set's log-space transition scores [n, n] and start scores [n] (0 where allowed,
    -inf where not: an I- tag only after its own B- or I-, never first), and the indices of its
    I- tags with those of their B- tags."""
    key = tuple(tags)
    if key not in _CONSTRAINTS:
        trans = np.where(_allowed_transitions(tags), 0.0, -np.inf)
        start = np.array([-np.inf if t.startswith("I-") else 0.0 for t in tags])
        inside = np.array([j for j, t in enumerate(tags) if t.startswith("I-")], dtype=np.int64)
        begin = np.array([list(tags).index(f"B-{tags[j][2:]}") for j in inside], dtype=np.int64)
        _CONSTRAINTS[key] = (trans, start, inside, begin)
    return _CONSTRAINTS[key]


def viterbi(probs: np.ndarray, tags: Sequence[str]) -> list[int]:
    """Most likely valid BIO sequence for per-token tag probabilities `probs` [T, n_tags].

    Two exact shortcuts keep the per-token loop off most tokens. The constraints are hard and the
    scores per token independent, so where the per-token best tags already form a valid sequence
    they are the best valid one. And at a token where every B-X is at least as likely as its I-X
    (a "cut"), some best valid path has no I- tag there: swapping an I-X for B-X keeps the path
    valid (the same tags may follow either) and loses nothing. So the best path with no I- tag at
    the cuts is a best path, and the decoding splits at the cuts into independent stretches: only
    the stretches whose best tags are not valid are decoded step by step (a third of the tokens
    of the dev notes, against nine in ten before the split)."""
    trans, start, inside, begin = _constraints(tags)
    greedy = np.argmax(probs, axis=1)
    if len(greedy) == 0:
        return []
    # bad[t]: the best tag at t may not follow the best tag at t - 1 (or, at 0, may not start)
    bad = np.concatenate([[start[greedy[0]] != 0.0], trans[greedy[:-1], greedy[1:]] != 0.0])
    if not bad.any():
        return greedy.tolist()
    # (a tag set with no I- tags never gets here: every sequence of it is valid)
    cut = np.all(probs[:, begin] >= probs[:, inside], axis=1)
    cut[0] = True
    bounds = np.append(np.flatnonzero(cut), len(probs))
    path = greedy.copy()
    # each stretch [a, b) holding a bad token is decoded step by step, its first token barred
    # from I- tags like a sequence's first (the cut rule above)
    for seg in np.unique(np.searchsorted(bounds, np.flatnonzero(bad), side="right") - 1):
        a, b = int(bounds[seg]), int(bounds[seg + 1])
        path[a:b] = _viterbi_steps(probs[a:b], trans, start)
    return path.tolist()


def _viterbi_steps(probs: np.ndarray, trans: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The step-by-step recursion over one stretch (its first token must not be an I- tag)."""
    logp = np.log(np.clip(probs, 1e-9, 1.0))
    score = logp[0] + start
    back = np.zeros(probs.shape, dtype=np.int64)
    cols = np.arange(probs.shape[1])
    for t in range(1, len(probs)):
        cand = score[:, None] + trans
        back[t] = np.argmax(cand, axis=0)
        score = cand[back[t], cols] + logp[t]
    path = np.empty(len(probs), dtype=np.int64)
    path[-1] = int(np.argmax(score))
    for t in range(len(probs) - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def decode_spans(
    probs: np.ndarray,
    offsets: Sequence[tuple[int, int]],
    tags: Sequence[str],
    words: Sequence[int] | None = None,
) -> list[DecodedSpan]:
    """Spans from per-token tag probabilities via constrained Viterbi decoding.

    With `words` (the word index of each word-piece), a span that starts or ends inside a word is
    widened to the whole word: annotations never split a word, word-pieces sometimes do.
    """
    if len(offsets) == 0:
        return []
    path = viterbi(probs, tags)
    spans: list[DecodedSpan] = []
    i = 0
    while i < len(path):
        tag = tags[path[i]]
        if tag == "O":
            i += 1
            continue
        label = tag[2:]
        j = i + 1
        while j < len(path) and tags[path[j]] == f"I-{label}":
            j += 1
        chosen = probs[np.arange(i, j), np.array(path[i:j])]
        lo, hi = i, j
        if words is not None:
            while lo > 0 and words[lo - 1] == words[lo] != -1:
                lo -= 1
            while hi < len(words) and words[hi] == words[hi - 1] != -1:
                hi += 1
        if spans:
            lo = max(lo, spans[-1].token_end)  # never overlap the previous span of this group
        spans.append(
            DecodedSpan(
                label=label,
                start=offsets[lo][0],
                end=offsets[hi - 1][1],
                token_start=lo,
                token_end=hi,
                confidence=float(chosen.mean()),
                min_prob=float(chosen.min()),
            )
        )
        i = hi
    return spans


@dataclass
class PairCandidate:
    """An (entity, modifier) pair of an allowed type within one sentence."""

    entity: int  # index into the note's entity list
    modifier: int  # index into the note's modifier list
    sentence: int


def candidate_pairs(
    entities: Sequence[tuple[str, int, int]],
    modifiers: Sequence[tuple[str, int, int]],
    sentences: Sequence[Sentence],
) -> list[PairCandidate]:
    """All allowed-type (entity, modifier) pairs whose spans start in the same sentence."""
    by_sentence: dict[int, list[int]] = {}
    for mi, (_, ms, _) in enumerate(modifiers):
        by_sentence.setdefault(sentence_index(sentences, ms), []).append(mi)
    out = []
    for ei, (etype, es, _) in enumerate(entities):
        si = sentence_index(sentences, es)
        for mi in by_sentence.get(si, []):
            if is_allowed_pair(etype, modifiers[mi][0]):
                out.append(PairCandidate(entity=ei, modifier=mi, sentence=si))
    return out


def marked_text(
    text: str,
    sentence: Sentence,
    entity: tuple[str, int, int],
    modifiers: Sequence[tuple[str, int, int]],
    context_chars: int,
) -> tuple[str, int, list[int]]:
    """The sentence (clipped to `context_chars` around the spans) with the entity and its candidate
    modifiers marked.

    Typed punctuation markers, `@ * problem * chest pain @` and `# ^ negation ^ denies #`, need no
    new vocabulary (any BERT tokenizer has them) and tell the classifier each argument's type.
    Marking all of an entity's candidates in one input classifies them in one encoder pass, and
    lets the classifier see the competing modifiers. Returns the marked text and the character
    positions of the entity's opening `@` and of each modifier's opening `#`.
    """
    etype, es, ee = entity
    lo = max(sentence.start, min([es, *(m[1] for m in modifiers)]) - context_chars)
    hi = min(sentence.end, max([ee, *(m[2] for m in modifiers)]) + context_chars)
    # (offset, closers before openers, which argument opens here, marker text)
    inserts: list[tuple[int, int, int, str]] = [(es, 1, -1, f" @ * {etype} * "), (ee, 0, -2, " @ ")]
    for i, (mtype, ms, me) in enumerate(modifiers):
        inserts += [(ms, 1, i, f" # ^ {mtype} ^ "), (me, 0, -2, " # ")]
    inserts.sort(key=lambda x: (x[0], x[1]))
    pieces: list[str] = []
    length, cur = 0, lo
    e_char, m_chars = -1, [-1] * len(modifiers)
    for at, _, which, mark in inserts:
        pieces.append(text[cur:at])
        length += at - cur
        if which == -1:
            e_char = length + 1  # the character after the marker's leading space
        elif which >= 0:
            m_chars[which] = length + 1
        pieces.append(mark)
        length += len(mark)
        cur = at
    pieces.append(text[cur:hi])
    return "".join(pieces), e_char, m_chars


def relation_inputs(
    tok: Tokenizer, special: SpecialIds, marked: tuple[str, int, list[int]], max_tokens: int
) -> tuple[list[int], int, list[int]] | None:
    """Token ids of a marked input and the token positions of its opening markers.

    None when the markers do not fit in `max_tokens`; otherwise the input is cut to a window
    that holds all of them.
    """
    text, e_char, m_chars = marked
    enc = tok.encode(text, add_special_tokens=False)
    where = {s: i for i, (s, _) in enumerate(enc.offsets)}
    if e_char not in where or any(c not in where for c in m_chars):
        return None
    e_pos, m_pos = where[e_char], [where[c] for c in m_chars]
    ids = enc.ids
    budget = max_tokens - 2
    if len(ids) > budget:
        lo_need, hi_need = min(e_pos, *m_pos), max(e_pos, *m_pos)
        if hi_need - lo_need + 8 > budget:
            return None
        centre = (lo_need + hi_need) // 2
        lo = max(0, min(centre - budget // 2, len(ids) - budget))
        ids = ids[lo : lo + budget]
        e_pos, m_pos = e_pos - lo, [p - lo for p in m_pos]
    return [special.cls, *ids, special.sep], e_pos + 1, [p + 1 for p in m_pos]


@dataclass
class GroupInput:
    """One relation-classifier input: an entity and some of its candidate modifiers, marked."""

    entity: int
    modifiers: list[int]  # indices into the note's modifier list
    ids: list[int]
    entity_pos: int
    modifier_pos: list[int]


def group_inputs(
    tok: Tokenizer,
    special: SpecialIds,
    text: str,
    sentences: Sequence[Sentence],
    entities: Sequence[tuple[str, int, int]],
    modifiers: Sequence[tuple[str, int, int]],
    context_chars: int,
    max_tokens: int,
) -> tuple[list[GroupInput], int]:
    """Relation inputs for every entity with allowed candidates in its sentence.

    An entity whose candidates do not fit in one input is split (nearest modifiers first) into
    several; a pair too far apart to fit even alone is returned in the count of skipped pairs.
    """
    by_entity: dict[int, list[int]] = {}
    sentence_of: dict[int, int] = {}
    for p in candidate_pairs(entities, modifiers, sentences):
        by_entity.setdefault(p.entity, []).append(p.modifier)
        sentence_of[p.entity] = p.sentence
    out: list[GroupInput] = []
    skipped = 0

    def build(ei: int, mods: list[int]) -> None:
        nonlocal skipped
        marked = marked_text(
            text, sentences[sentence_of[ei]], entities[ei], [modifiers[m] for m in mods], context_chars
        )
        enc = relation_inputs(tok, special, marked, max_tokens)
        if enc is not None:
            out.append(GroupInput(ei, mods, enc[0], enc[1], enc[2]))
        elif len(mods) == 1:
            skipped += 1
        else:
            half = len(mods) // 2
            build(ei, mods[:half])
            build(ei, mods[half:])

    for ei, mods in by_entity.items():
        centre = (entities[ei][1] + entities[ei][2]) / 2
        build(ei, sorted(mods, key=lambda m: abs((modifiers[m][1] + modifiers[m][2]) / 2 - centre)))
    return out, skipped
