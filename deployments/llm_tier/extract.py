"""From a note to LLM requests and from LLM outputs to a contract-shaped result, exact offsets.

The engine-independent half of the LLM tier: chunking (sentences longer than the model's budget
are split at whitespace, never cut), the two request steps, and alignment of every output back to
the note. Whatever the model writes, each span ends up at exact offsets or in `dropped` by reason.
Under constrained decoding each request also gets a grammar (`clinie.markup.markup_grammar`) that
only admits well-formed markup of its own text; the aligner stays as the safety net.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from clinie.markup import align_spans, markup_grammar, parse_markup
from clinie.schema import (
    ALLOWED_MODIFIERS,
    ENTITY_TYPES,
    MODIFIER_TYPES,
    EntitySpan,
    ModifierSpan,
    NoteResult,
    Relation,
    Route,
    TextRange,
)
from clinie.windows import split_sentences
from deployments.llm_tier.prompts import Message, entity_messages, modifier_messages

# Generation gives no calibrated probability per span; these fixed values say "as the LLM wrote
# it" (exact) or "repaired" (found after case or whitespace repair).
EXACT_CONFIDENCE = 0.9
REPAIRED_CONFIDENCE = 0.6


@dataclass(frozen=True)
class Chunk:
    """A piece of a note sent to the model as one unit: a sentence, or part of a long one."""

    start: int
    end: int


def chunk_note(text: str, max_chars: int) -> list[Chunk]:
    """Sentences, with those longer than `max_chars` split at whitespace into consecutive pieces.

    The pieces cover every non-space character of the note; a single run of non-space characters
    longer than `max_chars` is split inside (the only way to keep it whole-and-bounded).
    """
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    out: list[Chunk] = []
    for sent in split_sentences(text):
        start = sent.start
        while sent.end - start > max_chars:
            cut = text.rfind(" ", start + 1, start + max_chars + 1)
            cut = cut if cut > start else start + max_chars
            out.append(Chunk(start, cut))
            start = cut
            while start < sent.end and text[start].isspace():
                start += 1
        if start < sent.end:
            out.append(Chunk(start, sent.end))
    return out


def entity_requests(text: str, chunks: Sequence[Chunk]) -> list[list[Message]]:
    """Step 1: one request per chunk."""
    return [entity_messages(text[c.start : c.end]) for c in chunks]


def entity_grammars(text: str, chunks: Sequence[Chunk]) -> list[str | None]:
    """Step 1 under constrained decoding: per chunk, the grammar of its entity markups."""
    return [markup_grammar(text[c.start : c.end], ENTITY_TYPES) for c in chunks]


@dataclass
class LLMExtraction:
    """Entities, modifiers and relations of one note from the LLM, with exactness flags."""

    entities: list[tuple[str, int, int]]
    modifiers: list[tuple[str, int, int]] = field(default_factory=list)
    relations: list[tuple[int, int]] = field(default_factory=list)  # (entity index, modifier index)
    inexact: set[tuple[str, int, int]] = field(default_factory=set)
    dropped: Counter[str] = field(default_factory=Counter)


def parse_entities(text: str, chunks: Sequence[Chunk], outputs: Sequence[str]) -> LLMExtraction:
    """Entities (type, start, end) in note offsets from the step-1 outputs, what was repaired,
    and what was dropped."""
    found: set[tuple[str, int, int]] = set()
    result = LLMExtraction(entities=[])
    for chunk, output in zip(chunks, outputs, strict=True):
        spans, d = align_spans(text[chunk.start : chunk.end], parse_markup(output), ENTITY_TYPES, chunk.start)
        result.dropped.update(d)
        for s in spans:
            found.add((s.label, s.start, s.end))
            if not s.exact:
                result.inexact.add((s.label, s.start, s.end))
    result.entities = sorted(found, key=lambda s: (s[1], s[2], s[0]))
    return result


@dataclass
class ModifierRequest:
    """Step 2 for one entity: the request and where the entity sits."""

    entity: int  # index into the entity list
    chunk: Chunk
    messages: list[Message]


def modifier_requests(
    text: str, chunks: Sequence[Chunk], entities: Sequence[tuple[str, int, int]]
) -> list[ModifierRequest]:
    """Step 2: one request per entity, with that entity marked in its chunk."""
    out = []
    for i, (etype, start, end) in enumerate(entities):
        chunk = next((c for c in chunks if c.start <= start and end <= c.end), None)
        if chunk is None:
            continue  # an entity cannot straddle chunks: it was aligned inside one
        local = (etype, start - chunk.start, end - chunk.start)
        out.append(ModifierRequest(i, chunk, modifier_messages(text[chunk.start : chunk.end], local)))
    return out


def modifier_grammar(text: str, request: ModifierRequest, entities: Sequence[tuple[str, int, int]]) -> str | None:
    """Step 2 under constrained decoding: the chunk with its entity's mark kept and only the modifier
    types the schema allows for that entity."""
    etype, start, end = entities[request.entity]
    chunk = request.chunk
    local = (etype, start - chunk.start, end - chunk.start)
    return markup_grammar(text[chunk.start : chunk.end], ALLOWED_MODIFIERS[etype], fixed=local)


def parse_modifiers(
    text: str,
    result: LLMExtraction,
    requests: Sequence[ModifierRequest],
    outputs: Sequence[str],
) -> LLMExtraction:
    """Adds modifiers and relations from the step-2 outputs to step 1's `result` (drops keep
    adding up); disallowed pairs are dropped and counted."""
    entities = result.entities
    index: dict[tuple[str, int, int], int] = {}
    for req, output in zip(requests, outputs, strict=True):
        etype = entities[req.entity][0]
        parsed = parse_markup(output)
        # The entity's own mark is echoed back by design: not a modifier, not a drop.
        parsed.spans = [s for s in parsed.spans if s.label not in ENTITY_TYPES]
        wrong = [s for s in parsed.spans if s.label in MODIFIER_TYPES and s.label not in ALLOWED_MODIFIERS[etype]]
        result.dropped["disallowed_pair"] += len(wrong)
        parsed.spans = [s for s in parsed.spans if s not in wrong]
        spans, d = align_spans(text[req.chunk.start : req.chunk.end], parsed, ALLOWED_MODIFIERS[etype], req.chunk.start)
        result.dropped.update(d)
        for s in spans:
            key = (s.label, s.start, s.end)
            if key not in index:
                index[key] = len(result.modifiers)
                result.modifiers.append(key)
            if not s.exact:
                result.inexact.add(key)
            pair = (req.entity, index[key])
            if pair not in result.relations:
                result.relations.append(pair)
    if not result.dropped["disallowed_pair"]:
        del result.dropped["disallowed_pair"]
    return result


def to_result(
    note_id: str | None,
    text: str,
    ext: LLMExtraction,
    model: str,
    elapsed_ms: float,
    reason: str,
    ranges: list[tuple[int, int]] | None = None,
) -> NoteResult:
    """The contract's result shape, with ids T1.. (entities first, then modifiers, each by offset);
    `route.escalated_ranges` says what this tier answered: `ranges`, or the whole note."""
    ent_order = sorted(range(len(ext.entities)), key=lambda i: ext.entities[i][1:])
    mod_order = sorted(range(len(ext.modifiers)), key=lambda i: ext.modifiers[i][1:])
    ent_id = {i: f"T{n}" for n, i in enumerate(ent_order, 1)}
    mod_id = {i: f"T{len(ent_order) + n}" for n, i in enumerate(mod_order, 1)}

    def conf(span: tuple[str, int, int]) -> float:
        return REPAIRED_CONFIDENCE if span in ext.inexact else EXACT_CONFIDENCE

    entities = [
        EntitySpan(id=ent_id[i], type=t, start=s, end=e, text=text[s:e], confidence=conf((t, s, e)))  # type: ignore[arg-type]
        for i in ent_order
        for t, s, e in [ext.entities[i]]
    ]
    modifiers = [
        ModifierSpan(id=mod_id[i], type=t, start=s, end=e, text=text[s:e], confidence=conf((t, s, e)))  # type: ignore[arg-type]
        for i in mod_order
        for t, s, e in [ext.modifiers[i]]
    ]
    relations = [
        Relation(entity=ent_id[e], modifier=mod_id[m], confidence=min(conf(ext.entities[e]), conf(ext.modifiers[m])))
        for e, m in sorted(ext.relations, key=lambda p: (ent_order.index(p[0]), mod_order.index(p[1])))
    ]
    signals = {f"llm_dropped_{k}": float(v) for k, v in sorted(ext.dropped.items())}
    return NoteResult(
        note_id=note_id,
        entities=entities,
        modifiers=modifiers,
        relations=relations,
        route=Route(
            tier="llm",
            escalated=True,
            reason=reason,
            signals=signals,
            escalated_ranges=[TextRange(start=a, end=b) for a, b in (ranges or [(0, len(text))])],
        ),
        models={"llm": model},
        timings_ms={"llm": round(elapsed_ms, 2), "total": round(elapsed_ms, 2)},
    )
