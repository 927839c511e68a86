"""Partial-escalation merge: property tests over random results, plus worked examples."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clinie.schema import (
    ALLOWED_PAIRS,
    ENTITY_TYPES,
    MODIFIER_TYPES,
    EntitySpan,
    ModifierSpan,
    NoteResult,
    Relation,
    Route,
)
from router import merge_results

ROUTE = Route(tier="bert", escalated=False, reason="x")
Key = tuple[str, str, int, int]


def key(group: str, s: EntitySpan | ModifierSpan) -> Key:
    return (group, s.type, s.start, s.end)


@st.composite
def results(draw, text: str) -> NoteResult:
    """A valid NoteResult over `text`: random spans (duplicates and overlaps allowed) and relations."""
    n = len(text)
    raw = draw(
        st.lists(
            st.tuples(
                st.booleans(),  # entity?
                st.integers(0, len(ENTITY_TYPES) + len(MODIFIER_TYPES)),
                st.integers(0, n - 1),
                st.integers(1, 10),
                st.floats(0.0, 1.0),
            ),
            max_size=10,
        )
    )
    # repeat some spans exactly (same label and offsets) with another confidence
    repeats = draw(st.lists(st.tuples(st.integers(0, 100), st.floats(0.0, 1.0)), max_size=3)) if raw else []
    raw += [(*raw[i % len(raw)][:4], c) for i, c in repeats]
    entities, modifiers = [], []
    for i, (is_entity, t, start, length, conf) in enumerate(raw):
        end = min(start + length, n)
        common = {"id": f"T{i + 1}", "start": start, "end": end, "text": text[start:end], "confidence": conf}
        if is_entity:
            entities.append(EntitySpan(type=ENTITY_TYPES[t % len(ENTITY_TYPES)], **common))
        else:
            modifiers.append(ModifierSpan(type=MODIFIER_TYPES[t % len(MODIFIER_TYPES)], **common))
    allowed = [(e, m) for e in entities for m in modifiers if (e.type, m.type) in ALLOWED_PAIRS]
    relations = []
    if allowed:
        for e, m, conf in draw(
            st.lists(st.tuples(st.sampled_from(allowed), st.floats(0.0, 1.0)), max_size=8).map(
                lambda xs: [(em[0], em[1], c) for em, c in xs]
            )
        ):
            relations.append(Relation(entity=e.id, modifier=m.id, confidence=conf))
    return NoteResult(entities=entities, modifiers=modifiers, relations=relations, route=ROUTE)


@st.composite
def cases(draw):
    text = draw(st.text(alphabet="ab c.\n", min_size=1, max_size=60))
    fast = draw(results(text))
    llm = draw(results(text))
    # disjoint ranges, as sentences are (cut points taken in pairs)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), unique=True, max_size=8)))
    escalated = list(zip(cuts[::2], cuts[1::2], strict=False))
    escalated = draw(st.permutations(escalated))  # the caller's order does not matter
    return text, fast, llm, escalated


def inside(offset: int, ranges) -> bool:
    return any(s <= offset < e for s, e in ranges)


def owned(result: NoteResult, ranges, want_inside: bool) -> dict[str, Key]:
    """Old id -> key of the spans of `result` that the merge keeps from it."""
    out = {}
    for group, spans in (("entity", result.entities), ("modifier", result.modifiers)):
        for s in spans:
            if inside(s.start, ranges) == want_inside:
                out[s.id] = key(group, s)
    return out


@settings(max_examples=300, deadline=None)
@given(cases())
def test_merge_properties(case):
    text, fast, llm, escalated = case
    entities, modifiers, relations = merge_results(fast, llm, escalated)
    spans = [("entity", s) for s in entities] + [("modifier", s) for s in modifiers]

    # offsets and texts are untouched
    for _, s in spans:
        assert s.text == text[s.start : s.end]
    # identical spans collapsed
    keys = [key(g, s) for g, s in spans]
    assert len(set(keys)) == len(keys)
    # ids T1..Tn, entities by offset first, then modifiers by offset
    assert [s.id for _, s in spans] == [f"T{i + 1}" for i in range(len(spans))]
    assert [(s.start, s.end, s.type) for s in entities] == sorted((s.start, s.end, s.type) for s in entities)
    assert [(s.start, s.end, s.type) for s in modifiers] == sorted((s.start, s.end, s.type) for s in modifiers)

    # the LLM answers inside escalated ranges, the fast tier outside, and nothing is lost
    from_fast, from_llm = owned(fast, escalated, False), owned(llm, escalated, True)
    for g, s in spans:
        source = from_llm if inside(s.start, escalated) else from_fast
        assert key(g, s) in source.values()
    assert set(keys) == set(from_fast.values()) | set(from_llm.values())
    # a collapsed span keeps the highest confidence of its duplicates
    best: dict[Key, float] = {}
    for tier, ids in ((fast, from_fast), (llm, from_llm)):
        for s in [*tier.entities, *tier.modifiers]:
            if s.id in ids:
                best[ids[s.id]] = max(best.get(ids[s.id], 0.0), s.confidence)
    assert {key(g, s): s.confidence for g, s in spans} == best

    # relations: between present spans, allowed, from the tier that produced both spans, none invented
    by_id = {s.id: (g, s) for g, s in spans}
    got: dict[tuple[Key, Key], float] = {}
    for r in relations:
        assert by_id[r.entity][0] == "entity" and by_id[r.modifier][0] == "modifier"
        assert (by_id[r.entity][1].type, by_id[r.modifier][1].type) in ALLOWED_PAIRS
        pair = (key(*by_id[r.entity]), key(*by_id[r.modifier]))
        assert pair not in got
        got[pair] = r.confidence
    expected: dict[tuple[Key, Key], float] = {}
    for tier, ids in ((fast, from_fast), (llm, from_llm)):
        for r in tier.relations:
            if r.entity in ids and r.modifier in ids:
                pair = (ids[r.entity], ids[r.modifier])
                expected[pair] = max(expected.get(pair, 0.0), r.confidence)
    assert got == expected

    merged = NoteResult(
        entities=entities,
        modifiers=modifiers,
        relations=relations,
        route=Route(tier="bert+llm", escalated=bool(escalated), reason="low_confidence"),
    )
    merged.check_offsets(text)


@settings(max_examples=100, deadline=None)
@given(cases())
def test_merge_extremes(case):
    text, fast, llm, _ = case
    none = merge_results(fast, llm, [])
    everything = merge_results(fast, llm, [(0, len(text))])
    assert {key("entity", s) for s in none[0]} == {key("entity", s) for s in fast.entities}
    assert {key("modifier", s) for s in none[1]} == {key("modifier", s) for s in fast.modifiers}
    assert {key("entity", s) for s in everything[0]} == {key("entity", s) for s in llm.entities}
    assert {key("modifier", s) for s in everything[1]} == {key("modifier", s) for s in llm.modifiers}


# --- worked examples -----------------------------------------------------------------------------

NOTE = "Pain in knee. No fever today. Takes aspirin daily."
S1 = (0, 13)
S2 = (14, 29)
S3 = (30, len(NOTE))


def ent(i: int, label: str, phrase: str, conf: float = 0.9, nth: int = 0) -> EntitySpan:
    start = NOTE.index(phrase, 0 if not nth else NOTE.index(phrase) + 1)
    return EntitySpan(id=f"T{i}", type=label, start=start, end=start + len(phrase), text=phrase, confidence=conf)


def mod(i: int, label: str, phrase: str, conf: float = 0.9) -> ModifierSpan:
    start = NOTE.index(phrase)
    return ModifierSpan(id=f"T{i}", type=label, start=start, end=start + len(phrase), text=phrase, confidence=conf)


def result(entities, modifiers, relations=()) -> NoteResult:
    rels = [Relation(entity=e, modifier=m, confidence=c) for e, m, c in relations]
    return NoteResult(entities=entities, modifiers=modifiers, relations=rels, route=ROUTE)


def test_both_tiers_tag_the_same_sentence_llm_wins_inside():
    fast = result(
        [ent(1, "problem", "Pain"), ent(2, "test", "fever"), ent(3, "drug", "aspirin")],
        [mod(4, "bodyloc", "knee"), mod(5, "temporal", "today")],
        [("T1", "T4", 0.8), ("T2", "T5", 0.7)],
    )
    llm = result(
        [ent(1, "problem", "fever", 0.6), ent(2, "problem", "Pain", 0.99)],  # Pain is outside: ignored
        [mod(3, "negation", "No"), mod(4, "temporal", "today", 0.5)],
        [("T1", "T3", 0.9), ("T1", "T4", 0.85), ("T2", "T3", 0.4)],
    )
    entities, modifiers, relations = merge_results(fast, llm, [S2])
    assert [(e.type, e.text, e.confidence) for e in entities] == [
        ("problem", "Pain", 0.9),  # fast, outside
        ("problem", "fever", 0.6),  # LLM replaces the fast tier's "test"
        ("drug", "aspirin", 0.9),
    ]
    assert [(m.type, m.text, m.confidence) for m in modifiers] == [
        ("bodyloc", "knee", 0.9),
        ("negation", "No", 0.9),
        ("temporal", "today", 0.5),  # the LLM's copy, even though the fast tier was more confident
    ]
    assert [e.id for e in entities] == ["T1", "T2", "T3"] and [m.id for m in modifiers] == ["T4", "T5", "T6"]
    assert [(r.entity, r.modifier, r.confidence) for r in relations] == [
        ("T1", "T4", 0.8),  # Pain -> knee (fast)
        ("T2", "T5", 0.9),  # fever -> No (LLM)
        ("T2", "T6", 0.85),  # fever -> today (LLM)
    ]


def test_fast_relation_across_a_replaced_modifier_is_dropped():
    # the fast tier links "aspirin" (sentence 3, kept) to "today" (sentence 2, escalated)
    fast = result([ent(1, "drug", "aspirin")], [mod(2, "temporal", "today")], [("T1", "T2", 0.9)])
    # the LLM finds the same modifier span, but it cannot vouch for the fast tier's relation
    llm = result([], [mod(1, "temporal", "today", 0.8)])
    entities, modifiers, relations = merge_results(fast, llm, [S2])
    assert [e.text for e in entities] == ["aspirin"]
    assert [(m.text, m.confidence) for m in modifiers] == [("today", 0.8)]
    assert relations == []
    # without the escalation the fast relation stands
    _, _, kept = merge_results(fast, llm, [])
    assert [(r.entity, r.modifier) for r in kept] == [("T1", "T2")]


def test_llm_spans_outside_the_escalated_sentences_are_ignored():
    fast = result([], [])
    llm = result([ent(1, "problem", "Pain"), ent(2, "drug", "aspirin")], [mod(3, "frequency", "daily")])
    llm = result(llm.entities, llm.modifiers, [("T2", "T3", 0.9)])
    entities, modifiers, relations = merge_results(fast, llm, [S3])
    assert [e.text for e in entities] == ["aspirin"]
    assert [m.text for m in modifiers] == ["daily"]
    assert [(r.entity, r.modifier) for r in relations] == [("T1", "T2")]


def test_identical_spans_collapse_keeping_the_higher_confidence():
    fast = result(
        [ent(1, "problem", "Pain", 0.3), ent(2, "problem", "Pain", 0.8)],
        [mod(3, "bodyloc", "knee")],
        [("T1", "T3", 0.5), ("T2", "T3", 0.7)],
    )
    entities, _, relations = merge_results(fast, result([], []), [S2])
    assert [(e.id, e.confidence) for e in entities] == [("T1", 0.8)]
    assert [(r.entity, r.modifier, r.confidence) for r in relations] == [("T1", "T2", 0.7)]


def test_span_belongs_to_the_sentence_of_its_start():
    # a fast span starting before an escalated sentence and running into it is the fast tier's
    start = NOTE.index("knee")
    crossing = EntitySpan(
        id="T1", type="problem", start=start, end=S2[0] + 2, text=NOTE[start : S2[0] + 2], confidence=1
    )
    llm_span = ent(1, "problem", "fever")
    entities, _, _ = merge_results(result([crossing], []), result([llm_span], []), [S2])
    assert [(e.start, e.end) for e in entities] == [(crossing.start, crossing.end), (llm_span.start, llm_span.end)]
    # range ends are exclusive: a span starting at the range's end is outside it
    at_end = EntitySpan(id="T1", type="test", start=S2[1], end=S2[1] + 1, text=NOTE[S2[1]], confidence=1)
    entities, _, _ = merge_results(result([at_end], []), result([], []), [S2])
    assert len(entities) == 1
