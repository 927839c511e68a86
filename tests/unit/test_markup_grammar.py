"""The constrained-decoding grammar: it accepts exactly the sentence with well-formed tags of
allowed labels inserted, and everything it accepts aligns at exact offsets with nothing dropped.

Checked with xgrammar itself (the engine's backend), character by character, no tokenizer.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinie.markup import align_spans, markup_grammar, parse_markup, render
from clinie.schema import ALLOWED_MODIFIERS, ENTITY_TYPES

xgr_testing = pytest.importorskip("xgrammar.testing")

SENT = 'Pt denies chest pain; takes aspirin 81mg p.o. "daily"\r\n\tand Coumadin°.'


def accepts(grammar: str | None, output: str) -> bool:
    assert grammar is not None
    return bool(xgr_testing._is_grammar_accept_string(grammar, output))


def span(text: str, label: str, words: str, nth: int = 0) -> tuple[str, int, int]:
    start = -1
    for _ in range(nth + 1):
        start = text.index(words, start + 1)
    return (label, start, start + len(words))


GOLD = [
    span(SENT, "problem", "chest pain"),
    span(SENT, "drug", "aspirin"),
    span(SENT, "drug", "Coumadin"),
]


def test_gold_markup_matches_and_aligns_exactly():
    grammar = markup_grammar(SENT, ENTITY_TYPES)
    marked = render(SENT, GOLD)
    assert accepts(grammar, marked)
    assert accepts(grammar, SENT)  # no entity at all is a valid answer
    got, dropped = align_spans(SENT, parse_markup(marked), ENTITY_TYPES)
    assert sorted((a.label, a.start, a.end) for a in got) == sorted(GOLD) and not dropped
    assert all(a.exact for a in got)


@pytest.mark.parametrize(
    "bad",
    [
        render(SENT, GOLD).replace("</span>", "", 1),  # unclosed
        render(SENT, GOLD) + "</span>",  # stray closing tag
        render(SENT, GOLD).replace('class="drug"', "class=drug", 1),  # malformed
        render(SENT, GOLD).replace('class="drug"', 'class="medication"', 1),  # unknown label
        render(SENT, [*GOLD[:2], span(SENT, "severity", "Coumadin")]),  # a modifier label in step 1
        render(SENT, GOLD).replace("chest", "Chest", 1),  # altered text
        render(SENT, GOLD).replace("\r\n\t", " ", 1),  # altered whitespace
        render(SENT, GOLD) + " warfarin",  # text not in the source
        render(SENT, GOLD)[:-1],  # cut short
        render(SENT, [span(SENT, "problem", "pain")]).replace("pain", "pa", 1),  # tag inside a word
        render(SENT, [("problem", SENT.index("chest") - 1, SENT.index("chest") + 10)]),  # span starts on a space
        render(SENT, [span(SENT, "problem", "chest pain"), span(SENT, "problem", "pain")]),  # nested
        SENT.replace("chest", '<span class="problem"></span>chest', 1),  # empty span
    ],
)
def test_bad_markup_does_not_match(bad):
    assert not accepts(markup_grammar(SENT, ENTITY_TYPES), bad)


def test_tags_sit_at_word_and_punctuation_boundaries():
    grammar = markup_grammar(SENT, ["strength", "route", "frequency"])
    marked = render(
        SENT, [span(SENT, "strength", "81mg"), span(SENT, "route", "p.o."), span(SENT, "frequency", "daily")]
    )
    assert accepts(grammar, marked)
    # "81mg" is one word: no tag between the number and the unit.
    assert not accepts(grammar, render(SENT, [span(SENT, "strength", "81")]))
    assert accepts(grammar, render(SENT, [span(SENT, "route", "p.o")]))  # before the final "."


def test_step2_keeps_the_entity_mark_and_allows_only_its_modifier_types():
    sent = "Severe headache in the left temple since Monday, not nausea."
    entity = span(sent, "problem", "headache in the left temple")
    grammar = markup_grammar(sent, ALLOWED_MODIFIERS["problem"], fixed=entity)
    mods = [span(sent, "severity", "Severe"), span(sent, "bodyloc", "left temple"), span(sent, "temporal", "Monday")]
    marked = render(sent, [entity, *mods])
    assert '<span class="bodyloc">left temple</span></span>' in marked  # a modifier inside the entity
    assert accepts(grammar, marked)
    assert accepts(grammar, render(sent, [entity]))
    assert not accepts(grammar, sent)  # the entity's mark dropped
    assert not accepts(grammar, render(sent, [("problem", entity[1], entity[2] - 7), *mods[:1]]))  # mark moved
    assert not accepts(grammar, render(sent, [entity, span(sent, "strength", "Monday")]))  # not a problem's modifier
    crossing = sent.replace("Severe headache", '<span class="severity">Severe <span class="problem">headache</span>')
    assert not accepts(grammar, crossing.replace("temple</span>", "temple</span></span>"))
    # What the grammar accepts aligns exactly: the mark is the entity, the rest are modifiers.
    parsed = parse_markup(marked)
    parsed.spans = [s for s in parsed.spans if s.label not in ENTITY_TYPES]
    got, dropped = align_spans(sent, parsed, ALLOWED_MODIFIERS["problem"])
    assert sorted((a.label, a.start, a.end) for a in got) == sorted(mods) and not dropped


def test_grammar_not_built_where_it_cannot_hold():
    assert markup_grammar(" \n ", ENTITY_TYPES) is None  # nothing to mark
    assert markup_grammar("chest pain", ["bodyloc"], fixed=("problem", 5, 5)) is None  # empty mark
    assert markup_grammar("chest pain", ["bodyloc"], fixed=("problem", 2, 40)) is None  # outside the text
    assert markup_grammar("chest pain", ["bodyloc"], fixed=("problem", 5, 10)) is None  # starts on a space
    # A mark inside a word (the free-decoding aligner can produce one) splits the word there.
    grammar = markup_grammar("chest painful", ["bodyloc"], fixed=("problem", 6, 10))
    assert accepts(grammar, 'chest <span class="problem">pain</span>ful')
    # No allowed label: the answer is the text with the mark, nothing else.
    assert accepts(markup_grammar("chest pain", [], fixed=("problem", 0, 5)), '<span class="problem">chest</span> pain')


WORDS = st.sampled_from(
    ["pain", "81mg", "p.o.", "#", "//", "::=", '"x"', "\\", "é", "°", "-", "<", "&amp;", "'s", "q.", "日本"]
)
SEPS = st.sampled_from([" ", "  ", "\n", "\r\n", "\t", ""])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(WORDS, SEPS), min_size=1, max_size=10), st.data())
def test_any_text_and_any_token_aligned_spans_match_and_align_exactly(pieces, data):
    text = "".join(w + s for w, s in pieces).strip()
    if not re.search(r"\w|[^\w\s]", text):
        return
    units = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]
    # Non-overlapping runs of units, each a span of some entity type.
    picks = data.draw(st.lists(st.integers(0, len(units) - 1), unique=True, max_size=len(units)).map(sorted))
    spans = [
        (data.draw(st.sampled_from(ENTITY_TYPES)), units[picks[i]][0], units[picks[i + 1]][1])
        for i in range(0, len(picks) - 1, 2)
    ]
    grammar = markup_grammar(text, ENTITY_TYPES)
    marked = render(text, spans)
    assert accepts(grammar, marked)
    got, dropped = align_spans(text, parse_markup(marked), ENTITY_TYPES)
    assert sorted((a.label, a.start, a.end) for a in got) == sorted(spans) and not dropped


def test_tier_requests_get_grammars_their_own_prompts_satisfy():
    from deployments.llm_tier.extract import chunk_note, entity_grammars, modifier_grammar, modifier_requests

    note = "HISTORY: Patient denies chest pain.\r\nAspirin 81 mg p.o. daily. Severe headache."
    chunks = chunk_note(note, 30)  # the first sentence is split in two pieces
    grammars = entity_grammars(note, chunks)
    assert len(grammars) == len(chunks) == 4
    for chunk, grammar in zip(chunks, grammars, strict=True):
        assert accepts(grammar, note[chunk.start : chunk.end])
    entities = [span(note, "problem", "chest pain"), span(note, "drug", "Aspirin"), span(note, "problem", "headache")]
    for req in modifier_requests(note, chunks, entities):
        # Step 2's prompt shows the chunk with the entity marked: that alone is a valid answer.
        grammar = modifier_grammar(note, req, entities)
        assert accepts(grammar, req.messages[-1]["content"])
        assert not accepts(grammar, note[req.chunk.start : req.chunk.end])


def test_gold_markup_of_real_notes_matches_both_steps(train_dir):
    # The grammars must not rule out the right answer: every chunk's gold entities (step 1) and every
    # entity's gold modifiers (step 2) of real annotated notes, rendered as the prompts show them.
    from clinie.brat import read_corpus
    from deployments.llm_tier.extract import chunk_note

    for doc in read_corpus(train_dir)[:2]:
        by_id = {s.id: s for s in doc.spans}
        for c in chunk_note(doc.text, 600):
            text = doc.text[c.start : c.end]

            def local(s, c=c):
                return (s.label, s.start - c.start, s.end - c.start)

            inside = [s for s in doc.spans if c.start <= s.start and s.end <= c.end]
            entities = [local(s) for s in inside if s.label in ENTITY_TYPES]
            assert accepts(markup_grammar(text, ENTITY_TYPES), render(text, entities))
            for s in inside:
                if s.label not in ENTITY_TYPES:
                    continue
                mods = [local(by_id[r.modifier]) for r in doc.relations if r.entity == s.id]
                mods = [m for m in mods if 0 <= m[1] and m[2] <= len(text)]
                grammar = markup_grammar(text, ALLOWED_MODIFIERS[s.label], fixed=local(s))
                assert accepts(grammar, render(text, [local(s), *mods]))
