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
    found = [(m.start(), m.start() + len(needle), True) for m in re.finditer(re.escape(needle), haystack)]
    if found:
        return found
    # Repairs: case and runs of whitespace may differ; entities in the output are unescaped HTML.
    words = html.unescape(needle).split()
    if not words:
        return []
    pattern = r"\s+".join(re.escape(w) for w in words)
    return [(m.start(), m.end(), False) for m in re.finditer(pattern, haystack, re.IGNORECASE)]


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
