"""Span markup round trip, and repair or counted dropping of malformed model output."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clinie.markup import align_spans, parse_markup, render
from clinie.schema import ENTITY_TYPES, MODIFIER_TYPES

LABELS = set(ENTITY_TYPES) | set(MODIFIER_TYPES)
SENT = "Patient denies chest pain but reports pain in the left knee."


def test_round_trip_nested_and_repeated():
    knee = SENT.index("left knee")
    spans = [
        ("problem", SENT.index("chest pain"), SENT.index("chest pain") + 10),
        ("problem", SENT.index("pain in"), knee + 9),
        ("bodyloc", knee, knee + 9),
    ]
    marked = render(SENT, spans)
    assert '<span class="problem">pain in the <span class="bodyloc">left knee</span></span>' in marked
    got, dropped = align_spans(SENT, parse_markup(marked), LABELS, offset=100)
    assert sorted((a.label, a.start - 100, a.end - 100) for a in got) == sorted(spans)
    assert all(a.exact for a in got) and not dropped


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(sorted(LABELS)), st.integers(0, 60), st.integers(1, 20)), max_size=6))
def test_render_parse_align_is_identity_for_renderable_spans(raw):
    spans = sorted({(label, s, min(s + n, len(SENT))) for label, s, n in raw if s < len(SENT)})
    spans = [s for s in spans if SENT[s[1] : s[2]].strip() == SENT[s[1] : s[2]]]
    marked = render(SENT, spans)
    got, _ = align_spans(SENT, parse_markup(marked), LABELS)
    for a in got:
        assert (a.label, a.start, a.end) in spans
        assert SENT[a.start : a.end]


PIECES = [*"ab <>/=\"'", '<span class="problem">', "</span>", "pain", "<span", "PAIN\n"]


@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_garbage_never_crashes_and_never_gives_a_wrong_offset(output):
    source = "ab pain ab"
    got, dropped = align_spans(source, parse_markup(output), LABELS)
    for a in got:
        assert 0 <= a.start < a.end <= len(source)
        assert source[a.start : a.end].lower().split() == source[a.start : a.end].lower().split()
    assert all(v > 0 for v in dropped.values())


def test_malformed_output_is_repaired_or_counted():
    out = (
        'Patient <span class="negation">denies</span> <span class="problem">Chest  Pain</span> '
        'but <span class="symptom">reports</span> <span class="problem">headache</span> '
        '<span class="problem">pain</span> in the <span class="bodyloc">left knee'
    )
    parsed = parse_markup(out)
    got, dropped = align_spans(SENT, parsed, LABELS)
    spans = {(a.label, SENT[a.start : a.end]) for a in got}
    assert spans == {("negation", "denies"), ("problem", "chest pain"), ("problem", "pain")}
    assert dropped == {"unknown_label": 1, "not_in_source": 1, "unclosed_tag": 1}
    # The repeated word "pain" is placed where the model put it, not at its first occurrence.
    (pain,) = [a for a in got if SENT[a.start : a.end] == "pain"]
    assert pain.start == SENT.index("pain in")
    # Case and whitespace repairs are marked as inexact.
    assert not next(a for a in got if a.label == "problem" and a.start == SENT.index("chest")).exact


def test_truncated_tag_at_end_is_stripped():
    parsed = parse_markup('Patient denies <span class="problem">chest pain</span> <span cla')
    assert parsed.plain == "Patient denies chest pain "
    assert [(s.label, s.text) for s in parsed.spans] == [("problem", "chest pain")]
    assert parsed.dropped == {"malformed_tag": 1}


def test_overlapping_repeats_are_placed_where_the_model_marked_them():
    # "81mg 81mg" occurs at 5 and (overlapping it) at 10; the model marked the second.
    source = "pain 81mg 81mg 81mg"
    marked = render(source, [("strength", 10, 19)])
    got, dropped = align_spans(source, parse_markup(marked), LABELS)
    assert [(a.label, a.start, a.end, a.exact) for a in got] == [("strength", 10, 19, True)] and not dropped
    # The same with a case repair.
    got, _ = align_spans(source, parse_markup(marked.replace("81mg 81mg<", "81MG 81mg<")), LABELS)
    assert [(a.start, a.end, a.exact) for a in got] == [(10, 19, False)]
