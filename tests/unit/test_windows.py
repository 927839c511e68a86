import itertools

from hypothesis import given
from hypothesis import strategies as st

from clinie.windows import sentence_index, split_sentences, token_windows


def test_sentences_split_at_lines_and_periods():
    text = "HISTORY: Dr. Smith saw her.  She denies pain! BP 120/80.\r\nNo fever."
    got = [text[s.start : s.end] for s in split_sentences(text)]
    assert got == ["HISTORY: Dr. Smith saw her.", "She denies pain!", "BP 120/80.", "No fever."]


def test_abbreviations_do_not_split():
    text = "Take 1 tab p.o. b.i.d. for pain. Then stop."
    got = [text[s.start : s.end] for s in split_sentences(text)]
    assert got == ["Take 1 tab p.o. b.i.d. for pain.", "Then stop."]


@given(st.text(alphabet=st.sampled_from("ab .!?\n\r\tXY9é"), max_size=200))
def test_sentences_cover_every_non_space_character(text: str):
    sents = split_sentences(text)
    covered = set()
    prev_end = -1
    for s in sents:
        assert s.start >= prev_end and s.end > s.start
        assert not text[s.start].isspace() and not text[s.end - 1].isspace()
        covered.update(range(s.start, s.end))
        prev_end = s.end
    assert {i for i, c in enumerate(text) if not c.isspace()} <= covered
    for i in covered:
        assert sents[sentence_index(sents, i)].start <= i < sents[sentence_index(sents, i)].end


@given(st.integers(0, 2000), st.integers(2, 300), st.data())
def test_every_token_is_owned_by_exactly_one_window(n: int, size: int, data: st.DataObject):
    stride = data.draw(st.integers(0, size - 1))
    wins = token_windows(n, size, stride)
    owners = [0] * n
    for w in wins:
        assert w.end - w.start <= size
        assert w.start <= w.own_start <= w.own_end <= w.end
        for i in range(w.own_start, w.own_end):
            owners[i] += 1
    assert owners == [1] * n
    if n:
        assert wins[0].start == 0 and wins[-1].end == n


def test_owned_tokens_have_context():
    wins = token_windows(1000, 100, 40)
    for prev, nxt in itertools.pairwise(wins):
        assert prev.own_end - nxt.start >= 20 and prev.end - nxt.own_start >= 20
