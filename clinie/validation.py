"""What makes a note acceptable, checked once, before any model work, wherever it arrives."""

from __future__ import annotations

from collections.abc import Sequence

from clinie.errors import InputError
from clinie.schema import ErrorBody, NoteError, NoteResult


def validate_text(text: object, max_chars: int) -> str:
    """The note as a str, or an InputError naming what is wrong."""
    if not isinstance(text, str):
        raise InputError("invalid_text", "note text must be a string")
    if not text:
        raise InputError("empty_text", "note text is empty")
    if not text.strip():
        raise InputError("empty_text", "note text contains only whitespace")
    if len(text) > max_chars:
        raise InputError("note_too_long", f"note has {len(text)} characters; the limit is {max_chars}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError("invalid_text", f"note text is not valid Unicode (lone surrogate at {exc.start})") from exc
    return text


def partition_notes(
    notes: Sequence[tuple[str | None, object]], max_chars: int
) -> tuple[list[NoteResult | NoteError | None], list[tuple[int, str | None, str]]]:
    """Result slots in input order (a NoteError where a note is refused, None elsewhere) and the
    accepted notes as (slot index, note_id, text): one bad note never stops the others."""
    slots: list[NoteResult | NoteError | None] = [None] * len(notes)
    valid: list[tuple[int, str | None, str]] = []
    for i, (note_id, text) in enumerate(notes):
        try:
            valid.append((i, note_id, validate_text(text, max_chars)))
        except InputError as err:
            slots[i] = NoteError(note_id=note_id, error=ErrorBody(code=err.code, message=err.message))
    return slots, valid
