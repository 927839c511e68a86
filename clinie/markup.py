"""Span markup (the LLM tier's task format) and its alignment back to exact note offsets.

The seed paper's LLM pipeline rewrites a sentence with `<span class="TYPE">...</span>` around
each span. A model's rewrite can be malformed: tags left open, labels that do not exist, text that
is not in the sentence, words changed or dropped. `parse_markup` + `align_spans` never raise on
such output: every span is either mapped to exact offsets in the original sentence or dropped
with a counted reason.

Pure Python: the core imports no model library.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

_TAG = re.compile(r"<span\s+class\s*=\s*[\"']?([A-Za-z_\-]+)[\"']?\s*>|</span\s*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?span\b[^>]*>?", re.IGNORECASE)


def render(text: str, spans: list[tuple[str, int, int]]) -> str:
    """`text` with `<span class="label">` markup around `spans` (label, start, end), offsets in `text`.

    Nested spans are rendered nested; spans that cross each other are not (the later one is
    skipped), since markup cannot express them.
    """
    ordered = sorted(spans, key=lambda s: (s[1], -s[2]))
    kept: list[tuple[str, int, int]] = []
    for label, start, end in ordered:
        if not 0 <= start < end <= len(text):
            continue
        if any(s < start < e < end or start < s < end < e for _, s, e in kept):
            continue  # crosses a kept span
        kept.append((label, start, end))
    events: list[tuple[int, int, int, str]] = []
    for i, (label, start, end) in enumerate(kept):
        events.append((start, 1, -(end - start), f'<span class="{label}">'))
        events.append((end, 0, i, "</span>"))
    events.sort()
    out, cur = [], 0
    for pos, _, _, tag in events:
        out.append(text[cur:pos])
        out.append(tag)
        cur = pos
    out.append(text[cur:])
    return "".join(out)


@dataclass
class MarkedSpan:
    """A span as the model wrote it: its label, its text, and where it sits in the tag-free output."""

    label: str
    text: str
    out_start: int


@dataclass
class Parsed:
    """The tag-free output text, the spans found in it, and what was dropped while parsing."""

    plain: str
    spans: list[MarkedSpan] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def parse_markup(output: str) -> Parsed:
    """Spans of a model's marked-up output; unclosed, stray and malformed tags are counted."""
    plain: list[str] = []
    length = 0
    stack: list[tuple[str, int]] = []
    parsed = Parsed(plain="")
    cur = 0
    for m in _TAG.finditer(output):
        chunk = _strip_broken_tags(output[cur : m.start()], parsed)
        plain.append(chunk)
        length += len(chunk)
        cur = m.end()
        if m.group(1) is not None:
            stack.append((m.group(1).lower(), length))
        elif stack:
            label, start = stack.pop()
            text = "".join(plain)[start:length]
            parsed.spans.append(MarkedSpan(label=label, text=text, out_start=start))
        else:
            parsed.dropped["stray_closing_tag"] += 1
    tail = _strip_broken_tags(output[cur:], parsed)
    plain.append(tail)
    parsed.dropped["unclosed_tag"] += len(stack)
    parsed.plain = "".join(plain)
    parsed.spans.sort(key=lambda s: s.out_start)
    if not parsed.dropped["unclosed_tag"]:
        del parsed.dropped["unclosed_tag"]
    return parsed


def _strip_broken_tags(chunk: str, parsed: Parsed) -> str:
    """Remove span tags the strict pattern did not accept (e.g. cut off at the end of generation)."""
    cleaned, n = _ANY_TAG.subn("", chunk)
    if n:
        parsed.dropped["malformed_tag"] += n
    return cleaned


@dataclass
class AlignedSpan:
    """A span mapped to exact offsets of the original text."""

    label: str
    start: int
    end: int
    exact: bool  # found as written, at the expected place; False: found after case/space repair


def _occurrences(haystack: str, needle: str) -> list[tuple[int, int, bool]]:
    # Overlapping occurrences count too ("81mg 81mg" occurs twice in "81mg 81mg 81mg"): skipping
    # them, as re.finditer would, can leave only an occurrence other than the one the model marked.
    found = [(m.start(), m.start() + len(needle), True) for m in re.finditer(f"(?={re.escape(needle)})", haystack)]
    if found:
        return found
    # Repairs: case and runs of whitespace may differ; entities in the output are unescaped HTML.
    words = html.unescape(needle).split()
    if not words:
        return []
    pattern = r"\s+".join(re.escape(w) for w in words)
    return [(m.start(1), m.end(1), False) for m in re.finditer(f"(?=({pattern}))", haystack, re.IGNORECASE)]


def align_spans(
    source: str,
    parsed: Parsed,
    allowed_labels: Collection[str],
    offset: int = 0,
) -> tuple[list[AlignedSpan], Counter[str]]:
    """Map parsed spans onto `source` (a sentence), returning note offsets (`+ offset`).

    A span's text must occur in the source; where it occurs more than once, the occurrence
    closest to where the model put it (scaled to the source's length) wins. Dropped spans are
    counted by reason: `unknown_label`, `empty_span`, `not_in_source`, `duplicate`.
    """
    dropped: Counter[str] = Counter(parsed.dropped)
    out: list[AlignedSpan] = []
    seen: set[tuple[str, int, int]] = set()
    scale = len(source) / max(1, len(parsed.plain))
    for span in parsed.spans:
        if span.label not in allowed_labels:
            dropped["unknown_label"] += 1
            continue
        text = span.text.strip()
        if not text:
            dropped["empty_span"] += 1
            continue
        lead = len(span.text) - len(span.text.lstrip())
        expected = (span.out_start + lead) * scale
        hits = _occurrences(source, text)
        if not hits:
            dropped["not_in_source"] += 1
            continue
        start, end, exact = min(hits, key=lambda h: abs(h[0] - expected))
        exact = exact and parsed.plain == source
        key = (span.label, start + offset, end + offset)
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        out.append(AlignedSpan(label=span.label, start=key[1], end=key[2], exact=exact))
    return out, dropped


# --- Constrained decoding --------------------------------------------------------------------
# A tag may open right before and close right after a "unit": a run of word characters or one
# other non-space character. So `<span class="drug">aspirin</span>,` and `81 <span ...>mg</span>`
# are expressible, a tag inside a word is not, and a span never starts or ends on whitespace.
_UNIT = re.compile(r"\w+|[^\w\s]")
CLOSE_TAG = "</span>"


def open_tag(label: str) -> str:
    """The opening tag exactly as `render` writes it (and the prompts show it)."""
    return f'<span class="{label}">'


def _ebnf_literal(s: str) -> str:
    """`s` as a double-quoted EBNF string literal (xgrammar / GBNF escapes)."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _grammar_units(text: str, fixed: tuple[str, int, int] | None) -> list[tuple[int, int]] | None:
    """The units of `text` as (start, end), cut where the fixed mark starts or ends inside one;
    None when `fixed` does not fit in `text`."""
    cuts: set[int] = set()
    if fixed is not None:
        if not 0 <= fixed[1] < fixed[2] <= len(text):
            return None
        cuts = {fixed[1], fixed[2]}
    units: list[tuple[int, int]] = []
    for m in _UNIT.finditer(text):
        start = m.start()
        for cut in sorted(c for c in cuts if m.start() < c < m.end()):
            units.append((start, cut))
            start = cut
        units.append((start, m.end()))
    return units


def _fixed_boundaries(units: list[tuple[int, int]], fixed: tuple[str, int, int] | None) -> tuple[int, int] | None:
    """The boundary indexes (k: before unit k; len(units): the end) where the fixed mark opens and
    closes, (-1, -1) without one; None when it does not fall on unit boundaries."""
    if fixed is None:
        return -1, -1
    starts = [s for s, _ in units]
    ends = [e for _, e in units]
    if fixed[1] not in starts or fixed[2] not in ends:
        return None
    return starts.index(fixed[1]), ends.index(fixed[2]) + 1


def _grammar_gaps(
    text: str, units: list[tuple[int, int]], fixed: tuple[str, int, int] | None, fixed_open: int, fixed_close: int
) -> list[str]:
    """The text between unit k-1 and unit k (k = 0: before the first unit, k = n: after the last),
    with the fixed mark's tags where they belong: close right after a unit, open right before one."""
    n = len(units)
    gaps: list[str] = []
    for k in range(n + 1):
        lo = units[k - 1][1] if k else 0
        hi = units[k][0] if k < n else len(text)
        gap = (CLOSE_TAG if k == fixed_close else "") + text[lo:hi]
        if k == fixed_open and fixed is not None:
            gap += open_tag(fixed[0])
        gaps.append(gap)
    return gaps


def _grammar_rules(
    text: str, units: list[tuple[int, int]], gaps: list[str], labels: list[str], fixed_open: int, fixed_close: int
) -> list[str]:
    """The EBNF rules over the units, `labels` sorted."""
    n = len(units)
    # Two states per boundary: o{k} outside any span, i{k} inside one. Closing always returns to
    # o{k}, so a span can close and the next one open at the same boundary.
    rules = ["root ::= o0"]
    for k in range(n):
        unit = text[units[k][0] : units[k][1]]
        gap_unit = _ebnf_literal(gaps[k] + unit)
        alts = [f"{gap_unit} o{k + 1}"]
        if labels:
            gap = f"{_ebnf_literal(gaps[k])} " if gaps[k] else ""
            alts.append(f"{gap}open {_ebnf_literal(unit)} i{k + 1}")
        rules.append(f"o{k} ::= " + " | ".join(alts))
        if labels and k:  # no span can be open before the first unit
            # Inside a span: close it, or go on over the next unit unless the fixed mark is here.
            alts = [f"{_ebnf_literal(CLOSE_TAG)} o{k}"]
            if k not in (fixed_open, fixed_close):
                alts.append(f"{gap_unit} i{k + 1}")
            rules.append(f"i{k} ::= " + " | ".join(alts))
    rules.append(f"o{n} ::= {_ebnf_literal(gaps[n])}")
    if labels:
        rules.append(f"i{n} ::= {_ebnf_literal(CLOSE_TAG)} o{n}")
        rules.append("open ::= " + " | ".join(_ebnf_literal(open_tag(label)) for label in labels))
    return rules


def markup_grammar(
    text: str,
    labels: Collection[str],
    fixed: tuple[str, int, int] | None = None,
) -> str | None:
    """An EBNF grammar (xgrammar's / GBNF dialect, what vLLM's structured outputs take) of exactly
    the markups of `text`: the text itself, character for character, with non-empty, non-nested
    `<span class="L">...</span>` around runs of units, L in `labels`.

    `fixed` (label, start, end), offsets in `text`, is a mark that must appear as is (step 2 keeps
    the entity's own mark); spans of `labels` may sit inside or outside it but never cross it.
    Returns None when `text` has no unit or `fixed` does not fall on unit boundaries: the caller
    then decodes that request unconstrained (the aligner still checks the output).

    The language is finite (at most one tag per unit boundary), so decoding under it always ends:
    no output can be unclosed, malformed, of another label, or differ from the source.
    """
    units = _grammar_units(text, fixed)
    if not units:
        return None
    boundaries = _fixed_boundaries(units, fixed)
    if boundaries is None:
        return None
    fixed_open, fixed_close = boundaries
    gaps = _grammar_gaps(text, units, fixed, fixed_open, fixed_close)
    rules = _grammar_rules(text, units, gaps, sorted(labels), fixed_open, fixed_close)
    return "\n".join(rules) + "\n"
