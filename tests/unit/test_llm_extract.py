"""The LLM tier's engine-independent half: chunking, requests, and alignment of raw outputs."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from clinie.markup import render
from deployments.llm_tier.extract import (
    chunk_note,
    entity_requests,
    modifier_requests,
    parse_entities,
    parse_modifiers,
    to_result,
)

NOTE = "HISTORY: Patient denies chest pain.\r\nAspirin 81 mg p.o. daily. Severe headache."


@given(st.text(alphabet=st.sampled_from(list("ab c.\nD")), max_size=300), st.integers(1, 40))
def test_chunks_cover_every_character_within_budget(text, max_chars):
    chunks = chunk_note(text, max_chars)
    covered = set()
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.end <= nxt.start
    for c in chunks:
        assert 0 < c.end - c.start <= max_chars
        covered.update(range(c.start, c.end))
    assert {i for i, ch in enumerate(text) if not ch.isspace()} <= covered


def _span(text, label, word, nth=0):
    start = -1
    for _ in range(nth + 1):
        start = text.index(word, start + 1)
    return (label, start, start + len(word))


def test_two_steps_from_raw_outputs_to_a_valid_result():
    chunks = chunk_note(NOTE, 200)
    assert len(entity_requests(NOTE, chunks)) == len(chunks) == 3
    first = NOTE[chunks[0].start : chunks[0].end]
    outputs = [
        render(first, [_span(first, "problem", "chest pain")]) + " <span class=",  # truncated generation
        '<span class="drug">Aspirin</span> 81 mg p.o. <span class="drug">daily</span>. '
        '<span class="drug">warfarin</span>',  # "warfarin" is not in the note
        'Severe <span class="problem">headache</span>.',
    ]
    ext = parse_entities(NOTE, chunks, outputs)
    entities = ext.entities
    assert entities == [
        _span(NOTE, "problem", "chest pain"),
        _span(NOTE, "drug", "Aspirin"),
        _span(NOTE, "drug", "daily"),
        _span(NOTE, "problem", "headache"),
    ]
    assert ext.dropped == {"malformed_tag": 1, "not_in_source": 1}
    # Outputs that did not reproduce their sentence (cut tag, invented words) give inexact spans.
    assert ext.inexact == set(entities[:3])

    requests = modifier_requests(NOTE, chunks, entities)
    assert len(requests) == 4
    assert '<span class="problem">chest pain</span>' in requests[0].messages[-1]["content"]
    mod_outputs = [
        'HISTORY: Patient <span class="negation">denies</span> <span class="problem">chest pain</span>.',
        '<span class="drug">Aspirin</span> <span class="strength">81 mg</span> <span class="route">p.o.</span> '
        '<span class="frequency">daily</span>.',
        "Aspirin 81 mg p.o. daily.",
        '<span class="severity">SEVERE</span> <span class="route">headache</span>. '
        '<span class="severity">extreme</span>',  # route is not allowed for a problem
    ]
    ext = parse_modifiers(NOTE, ext, requests, mod_outputs)
    # Step 2 drops one disallowed pair and one span not in the note, added to step 1's drops.
    assert ext.dropped == {"malformed_tag": 1, "not_in_source": 2, "disallowed_pair": 1}
    result = to_result("n1", NOTE, ext, "tiny@1", 12.0, "policy:llm-only")
    result.check_offsets(NOTE)
    by_id = {s.id: s for s in [*result.entities, *result.modifiers]}
    pairs = {(by_id[r.entity].text, by_id[r.modifier].text) for r in result.relations}
    assert pairs == {
        ("chest pain", "denies"),
        ("Aspirin", "81 mg"),
        ("Aspirin", "p.o."),
        ("Aspirin", "daily"),
        ("headache", "Severe"),
    }
    severe = next(m for m in result.modifiers if m.type == "severity")
    assert severe.confidence < next(m for m in result.modifiers if m.type == "negation").confidence  # case repair
    assert result.route.tier == "llm" and result.route.signals["llm_dropped_disallowed_pair"] == 1.0
    assert [(r.start, r.end) for r in result.route.escalated_ranges] == [(0, len(NOTE))]  # the whole note
    some = to_result("n1", NOTE, ext, "tiny@1", 12.0, "low_confidence", [(0, 10), (20, 30)])
    assert [(r.start, r.end) for r in some.route.escalated_ranges] == [(0, 10), (20, 30)]


def test_repaired_entities_get_the_lower_confidence():
    text = "Severe headache today."
    chunks = chunk_note(text, 200)
    ext = parse_entities(text, chunks, ['Severe <span class="problem">HEADACHE</span> today.'])
    result = to_result("n", text, ext, "m", 1.0, "policy:llm-only")
    (entity,) = result.entities
    assert entity.text == "headache" and entity.confidence < 0.9
