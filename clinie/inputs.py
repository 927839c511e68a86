"""Reading notes for `clinie extract`: `.txt` files, folders of them, and `.jsonl` of {note_id, text}.

A note that cannot be read (bad encoding, a broken JSON line) becomes an `ErrorBody` in its slot,
so one bad file never stops the others; problems with the arguments themselves raise
`InputPathError` (the CLI turns it into exit status 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clinie.schema import ErrorBody


class InputPathError(ValueError):
    """An INPUT argument that is missing or of an unsupported kind."""


@dataclass
class NoteInput:
    """One note to extract, or the reason it could not be read."""

    note_id: str | None
    text: str | None
    error: ErrorBody | None = None
    source: str = ""


def _read_txt(path: Path) -> NoteInput:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return NoteInput(note_id=path.stem, text=fh.read(), source=str(path))
    except UnicodeDecodeError as exc:
        return NoteInput(
            note_id=path.stem,
            text=None,
            error=ErrorBody(code="invalid_encoding", message=f"{path.name} is not UTF-8 (byte {exc.start})"),
            source=str(path),
        )


def _read_jsonl(path: Path) -> Iterator[NoteInput]:
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield NoteInput(None, None, ErrorBody(code="invalid_encoding", message=f"{where} is not UTF-8"))
                continue
            except json.JSONDecodeError as exc:
                yield NoteInput(None, None, ErrorBody(code="invalid_json", message=f"{where}: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                yield NoteInput(None, None, ErrorBody(code="invalid_json", message=f"{where}: expected an object"))
                continue
            note_id = obj.get("note_id")
            note_id = None if note_id is None else str(note_id)
            text = obj.get("text")
            if not isinstance(text, str):
                code = "missing_text" if text is None else "invalid_text"
                msg = f"{where}: 'text' is missing" if text is None else f"{where}: 'text' must be a string"
                yield NoteInput(note_id, None, ErrorBody(code=code, message=msg))
                continue
            yield NoteInput(note_id, text, source=where)


def read_inputs(paths: Sequence[str | Path]) -> list[NoteInput]:
    """All notes named by the INPUT arguments, in argument order (folders sorted by file name)."""
    notes: list[NoteInput] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise InputPathError(f"folder has no .txt notes: {path}")
            notes += [_read_txt(f) for f in files]
        elif not path.exists():
            raise InputPathError(f"input not found: {path}")
        elif path.suffix == ".jsonl":
            notes += list(_read_jsonl(path))
        elif path.suffix == ".txt":
            notes.append(_read_txt(path))
        else:
            raise InputPathError(f"unsupported input {path}: expected a .txt file, a folder of them, or a .jsonl")
    return notes
