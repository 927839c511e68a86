"""Partial escalation: merge the LLM tier's answer for some sentences into the fast tier's result.

The rule (documented in the README and tested property-style):
1. A span belongs to the sentence its start offset falls in.
2. In an escalated sentence the LLM tier's spans replace the fast tier's; elsewhere the fast
   tier's spans stand and any LLM span is ignored. The stronger tier answers where it was asked.
3. Identical spans (same label, same offsets) collapse into one, keeping the higher confidence.
4. A relation survives when both its spans survive and it came from the tier that produced
   them; no relation is invented across tiers.
5. Ids are reassigned `T1..` (entities by offset, then modifiers by offset).
Offsets are never changed, so `text == note[start:end]` still holds for every span.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from clinie.schema import EntitySpan, ModifierSpan, NoteResult, Relation

Span = EntitySpan | ModifierSpan


def _in_ranges(offset: int, starts: list[int], ranges: Sequence[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(starts, offset) - 1
    return i >= 0 and ranges[i][0] <= offset < ranges[i][1]


def merge_results(
    fast: NoteResult, llm: NoteResult, escalated: Sequence[tuple[int, int]]
) -> tuple[list[EntitySpan], list[ModifierSpan], list[Relation]]:
    """Spans and relations of the merged answer (the caller sets route, models and timings).

    `escalated` lists the character ranges (sentences) the LLM tier answered.
    """
    ranges = sorted(escalated)
    starts = [s for s, _ in ranges]
    kept: dict[tuple[str, str, int, int], tuple[Span, str]] = {}  # key -> (span, "fast"/"llm")
    old_ids: dict[tuple[str, str], tuple[str, str, int, int]] = {}  # (tier, old id) -> key

    for tier, result, inside in (("fast", fast, False), ("llm", llm, True)):
        for group, spans in (("entity", result.entities), ("modifier", result.modifiers)):
            for s in spans:
                if _in_ranges(s.start, starts, ranges) != inside:
                    continue
                key = (group, s.type, s.start, s.end)
                old_ids[(tier, s.id)] = key
                if key not in kept or s.confidence > kept[key][0].confidence:
                    kept[key] = (s, tier)

    ents = sorted((k for k in kept if k[0] == "entity"), key=lambda k: (k[2], k[3], k[1]))
    mods = sorted((k for k in kept if k[0] == "modifier"), key=lambda k: (k[2], k[3], k[1]))
    new_id = {k: f"T{i + 1}" for i, k in enumerate([*ents, *mods])}
    entities = [EntitySpan(**{**kept[k][0].model_dump(), "id": new_id[k]}) for k in ents]
    modifiers = [ModifierSpan(**{**kept[k][0].model_dump(), "id": new_id[k]}) for k in mods]

    relations: dict[tuple[str, str], Relation] = {}
    for tier, result in (("fast", fast), ("llm", llm)):
        for r in result.relations:
            ek, mk = old_ids.get((tier, r.entity)), old_ids.get((tier, r.modifier))
            if ek is None or mk is None or ek not in new_id or mk not in new_id:
                continue
            pair = (new_id[ek], new_id[mk])
            if pair not in relations or r.confidence > relations[pair].confidence:
                relations[pair] = Relation(entity=pair[0], modifier=pair[1], confidence=r.confidence)
    return entities, modifiers, sorted(relations.values(), key=lambda r: (int(r.entity[1:]), int(r.modifier[1:])))
