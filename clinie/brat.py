"""brat standoff I/O: `NAME.txt` (the note) + `NAME.ann` (T and R lines).

The reader is strict about what it keeps and loud about what it drops: every skipped line is
counted by reason in `Document.issues` (never silently lost, never a crash on one odd line).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, Field

from clinie.schema import (
    ENTITY_TYPES,
    MODIFIER_TYPES,
    RELATION_ALIASES,
    NoteResult,
    is_allowed_pair,
)


class GoldSpan(BaseModel):
    """One annotated span (entity or modifier)."""

    id: str = Field(description="brat id, e.g. T12.")
    label: str = Field(description="Entity or modifier label.")
    start: int = Field(ge=0, description="Start offset, inclusive.")
    end: int = Field(ge=0, description="End offset, exclusive.")

    @property
    def is_entity(self) -> bool:
        return self.label in ENTITY_TYPES


class GoldRelation(BaseModel):
    """One `hasAttr` relation, entity (Arg1) to modifier (Arg2)."""

    entity: str = Field(description="Id of the entity span.")
    modifier: str = Field(description="Id of the modifier span.")


class Document(BaseModel):
    """A note with its annotations."""

    name: str = Field(description="File stem; used as note_id.")
    text: str = Field(description="The note exactly as in NAME.txt (newlines untouched).")
    spans: list[GoldSpan] = Field(default_factory=list, description="Entity and modifier spans.")
    relations: list[GoldRelation] = Field(default_factory=list, description="hasAttr relations.")
    issues: dict[str, int] = Field(default_factory=dict, description="Dropped or odd lines, by reason.")

    @property
    def entities(self) -> list[GoldSpan]:
        return [s for s in self.spans if s.label in ENTITY_TYPES]

    @property
    def modifiers(self) -> list[GoldSpan]:
        return [s for s in self.spans if s.label in MODIFIER_TYPES]


def read_text(path: Path) -> str:
    """Read a note as UTF-8 without newline translation (offsets count `\\r` too)."""
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def _parse_span_line(fields: list[str], text: str, issues: Counter[str]) -> GoldSpan | None:
    """A `T` line's span, or None (the reason counted in `issues`)."""
    head = fields[1].split(" ", 1)
    if len(head) != 2:
        issues["malformed_span_line"] += 1
        return None
    label, extent = head
    if label not in ENTITY_TYPES and label not in MODIFIER_TYPES:
        issues["unknown_label"] += 1
        return None
    try:
        # Discontinuous spans ("s1 e1;s2 e2") are covered by their outer extent.
        pieces = [tuple(int(x) for x in part.split(" ")) for part in extent.split(";")]
        start, end = min(p[0] for p in pieces), max(p[1] for p in pieces)
    except (ValueError, IndexError):
        issues["malformed_offsets"] += 1
        return None
    if len(pieces) > 1:
        issues["discontinuous_span_merged"] += 1
    if not (0 <= start < end <= len(text)):
        issues["offsets_out_of_range"] += 1
        return None
    if len(fields) >= 3 and text[start:end] != fields[2] and len(pieces) == 1:
        # The offsets are the ground truth; a differing copy of the text is only noted.
        issues["span_text_mismatch"] += 1
    return GoldSpan(id=fields[0], label=label, start=start, end=end)


def _parse_relation_line(fields: list[str], issues: Counter[str]) -> tuple[str, str] | None:
    """An `R` line's (Arg1, Arg2) ids, or None (the reason counted in `issues`)."""
    parts = fields[1].split(" ")
    if len(parts) != 3 or parts[0] not in RELATION_ALIASES:
        issues["unknown_relation"] += 1
        return None
    args = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
    if "Arg1" not in args or "Arg2" not in args:
        issues["malformed_relation"] += 1
        return None
    return args["Arg1"], args["Arg2"]


def _resolve_relations(
    spans: dict[str, GoldSpan], raw_relations: list[tuple[str, str]], issues: Counter[str]
) -> list[GoldRelation]:
    """Relations between kept spans, entity first, allowed pairs only, each once."""
    relations: list[GoldRelation] = []
    seen: set[tuple[str, str]] = set()
    for a1, a2 in raw_relations:
        s1, s2 = spans.get(a1), spans.get(a2)
        if s1 is None or s2 is None:
            issues["relation_to_missing_span"] += 1
            continue
        if s1.label in MODIFIER_TYPES and s2.label in ENTITY_TYPES:
            s1, s2 = s2, s1  # arguments written the other way round
        if not is_allowed_pair(s1.label, s2.label):
            issues["relation_pair_not_allowed"] += 1
            continue
        if (s1.id, s2.id) in seen:
            issues["duplicate_relation"] += 1
            continue
        seen.add((s1.id, s2.id))
        relations.append(GoldRelation(entity=s1.id, modifier=s2.id))
    return relations


def parse_ann(name: str, text: str, ann: str) -> Document:
    """Parse the content of an `.ann` file against its note text."""
    issues: Counter[str] = Counter()
    spans: dict[str, GoldSpan] = {}
    raw_relations: list[tuple[str, str]] = []
    for line in ann.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        ident = fields[0]
        if ident.startswith("T") and len(fields) >= 2:
            span = _parse_span_line(fields, text, issues)
            if span is not None:
                spans[ident] = span
        elif ident.startswith("R") and len(fields) >= 2:
            args = _parse_relation_line(fields, issues)
            if args is not None:
                raw_relations.append(args)
        else:
            issues["ignored_line"] += 1
    relations = _resolve_relations(spans, raw_relations, issues)
    return Document(name=name, text=text, spans=list(spans.values()), relations=relations, issues=dict(issues))


def read_document(txt_path: Path) -> Document:
    """Read `NAME.txt` and, when present, `NAME.ann` beside it."""
    text = read_text(txt_path)
    ann_path = txt_path.with_suffix(".ann")
    ann = read_text(ann_path) if ann_path.exists() else ""
    return parse_ann(txt_path.stem, text, ann)


def read_corpus(directory: Path | str) -> list[Document]:
    """Read every `*.txt` (with its `.ann`) in a folder, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"brat folder not found: {directory}")
    docs = [read_document(p) for p in sorted(directory.glob("*.txt"))]
    if not docs:
        raise FileNotFoundError(f"no .txt notes in brat folder: {directory}")
    return docs


def corpus_hash(docs: Iterable[Document]) -> str:
    """A content hash of notes and annotations, for model cards."""
    h = hashlib.sha256()
    for d in sorted(docs, key=lambda d: d.name):
        h.update(d.name.encode())
        h.update(d.text.encode())
        for s in sorted(d.spans, key=lambda s: (s.start, s.end, s.label)):
            h.update(f"{s.label}:{s.start}:{s.end};".encode())
        h.update(str(len(d.relations)).encode())
    return h.hexdigest()[:16]


def format_ann(doc: Document) -> str:
    """Write a document's annotations back as brat standoff."""
    lines = [f"{s.id}\t{s.label} {s.start} {s.end}\t{doc.text[s.start : s.end]}" for s in doc.spans]
    lines += [f"R{i}\thasAttr Arg1:{r.entity} Arg2:{r.modifier}" for i, r in enumerate(doc.relations, 1)]
    return "\n".join(lines) + ("\n" if lines else "")


def write_document(doc: Document, directory: Path) -> None:
    """Write `NAME.txt` and `NAME.ann` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{doc.name}.txt", "w", encoding="utf-8", newline="") as fh:
        fh.write(doc.text)
    with open(directory / f"{doc.name}.ann", "w", encoding="utf-8", newline="") as fh:
        fh.write(format_ann(doc))


def document_from_result(name: str, text: str, result: NoteResult) -> Document:
    """A result (prediction) as a Document, for scoring or brat export."""
    spans = [GoldSpan(id=s.id, label=s.type, start=s.start, end=s.end) for s in [*result.entities, *result.modifiers]]
    rels = [GoldRelation(entity=r.entity, modifier=r.modifier) for r in result.relations]
    return Document(name=name, text=text, spans=spans, relations=rels)
