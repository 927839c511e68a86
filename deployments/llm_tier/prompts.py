"""Prompts of the two-step span-markup task (the seed paper's LLM pipeline).

Step 1 rewrites a sentence with `<span class="TYPE">` around every entity. Step 2 gets the sentence
with one entity marked and rewrites it with that entity's modifiers marked, restricted to the
modifier types the schema allows for the entity's type. Messages are chat-format; the engine
applies the model's chat template.
"""

from __future__ import annotations

from clinie.markup import render
from clinie.schema import ALLOWED_MODIFIERS, ENTITY_TYPES

ENTITY_GUIDE = {
    "problem": "disease, syndrome, injury, sign or symptom, abnormal finding, infection",
    "treatment": "procedure, intervention, therapy or device given to treat a problem",
    "drug": "the name of one medication, brand or generic, or of a drug class (no dose or route)",
    "test": "lab test, imaging, vital sign or physical-exam item done to detect, diagnose or monitor",
}
MODIFIER_GUIDE = {
    "negation": "cue that the entity is absent or not done (denies, no, negative for)",
    "temporal": "date, time or duration anchoring the entity",
    "severity": "intensity (mild, severe, significant)",
    "condition": "the problem holds only under a condition",
    "uncertain": "explicit doubt (possible, rule out, likely)",
    "subject": "someone other than the patient has it",
    "bodyloc": "anatomical site",
    "course": "change over time (improved, worsening, resolved)",
    "strength": "amount per unit (40 mg)",
    "dosage": "how much per administration (two tablets)",
    "duration": "how long it is taken (for 10 days)",
    "form": "tablet, spray, cream, ...",
    "frequency": "how often (b.i.d., daily)",
    "route": "how it is given (p.o., IV, topical)",
    "labvalue": "the result, numeric or descriptive (130 pounds, normal)",
    "reference_range": "the normal range given with a result",
}

Message = dict[str, str]
# A one-shot example (written for this prompt, not taken from the corpus).
_EXAMPLE = "She denies chest pain and takes aspirin 81 mg daily; EKG was normal."
_EXAMPLE_SPANS = [("problem", "chest pain"), ("drug", "aspirin"), ("test", "EKG")]


def entity_messages(sentence: str) -> list[Message]:
    guide = "\n".join(f"- {t}: {ENTITY_GUIDE[t]}" for t in ENTITY_TYPES)
    system = (
        "You annotate clinical text. Copy the sentence exactly, character for character, and wrap "
        'every mention of these entity types in <span class="TYPE">...</span>:\n'
        f"{guide}\n"
        "Mark whole noun phrases. Section headers are not entities. Output only the sentence."
    )
    example_out = render(_EXAMPLE, [(t, _EXAMPLE.index(w), _EXAMPLE.index(w) + len(w)) for t, w in _EXAMPLE_SPANS])
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": _EXAMPLE},
        {"role": "assistant", "content": example_out},
        {"role": "user", "content": sentence},
    ]


def modifier_messages(sentence: str, entity: tuple[str, int, int]) -> list[Message]:
    """`entity` is (type, start, end) with offsets in `sentence`."""
    etype = entity[0]
    allowed = ALLOWED_MODIFIERS[etype]
    guide = "\n".join(f"- {m}: {MODIFIER_GUIDE[m]}" for m in allowed)
    system = (
        f'The sentence has one {etype} marked with <span class="{etype}">. Copy the sentence exactly, '
        "keep that mark, and wrap each modifier of that entity, and of no other, in "
        f'<span class="TYPE">...</span>, using only these types:\n{guide}\n'
        "Output only the sentence."
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": render(sentence, [entity])},
    ]
