"""Sentences and token windows with exact character offsets.

Nothing here cuts text: long notes become overlapping token windows, and every token is owned by
exactly one window (the one in which it has the most context on both sides), so predictions can
be stitched back without gaps or duplicates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, Field, model_validator

# Tokens after which a period does not end a sentence (lower-cased, without the period).
_ABBREVIATIONS = frozenset(
    {
        "dr", "mr", "mrs", "ms", "st", "vs", "etc", "e.g", "i.e", "no", "approx", "fig", "pt",
        "p.o", "b.i.d", "t.i.d", "q.i.d", "q.d", "p.r.n", "q.h.s", "h.s", "a.m", "p.m", "cc",
        "mg", "ml", "mcg", "gm", "dl", "mm", "cm", "kg", "lb", "lbs", "oz", "hr", "hrs", "min",
        "sec", "wk", "wks", "yr", "yrs", "mo", "mos", "sr", "jr", "prof", "inc", "u.s",
    }
)  # fmt: skip
_BOUNDARY = re.compile(r"[.!?](?=[\"')\]]*\s+[\"'(\[]*[A-Z0-9])")
_LINE = re.compile(r"[^\r\n]+")


class Sentence(BaseModel):
    """A sentence as a character range of its note."""

    start: int = Field(ge=0, description="Start offset, inclusive (first non-space character).")
    end: int = Field(ge=0, description="End offset, exclusive (after the last non-space character).")

    @model_validator(mode="after")
    def _check(self) -> Sentence:
        if self.end <= self.start:
            raise ValueError("sentence must not be empty")
        return self


def split_sentences(text: str) -> list[Sentence]:
    """Split a note into sentences: at line breaks, and after . ! ? before a capital or digit.

    Returns non-empty, non-overlapping, ordered ranges that cover every non-space character.
    """
    out: list[Sentence] = []
    for line in _LINE.finditer(text):
        cut = line.start()
        for m in _BOUNDARY.finditer(text, line.start(), line.end()):
            word = re.search(r"(\S+)$", text[cut : m.start()])
            token = word.group(1).lower().lstrip("([\"'") if word else ""
            if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
                continue
            _append(out, text, cut, m.end())
            cut = m.end()
        _append(out, text, cut, line.end())
    return out


def _append(out: list[Sentence], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        out.append(Sentence(start=start, end=end))


def sentence_index(sentences: Sequence[Sentence], offset: int) -> int:
    """Index of the sentence containing `offset`, or of the nearest one before it (-1 if none)."""
    lo, hi = 0, len(sentences)
    while lo < hi:
        mid = (lo + hi) // 2
        if sentences[mid].start <= offset:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


class TokenWindow(BaseModel):
    """A run of tokens `[start, end)` fed to the encoder together; it owns `[own_start, own_end)`."""

    start: int = Field(ge=0, description="First token index in the window.")
    end: int = Field(ge=0, description="One past the last token index in the window.")
    own_start: int = Field(ge=0, description="First token whose prediction this window provides.")
    own_end: int = Field(ge=0, description="One past the last token this window provides.")


def token_windows(n_tokens: int, max_tokens: int, stride: int) -> list[TokenWindow]:
    """Cover `n_tokens` tokens with windows of at most `max_tokens`, overlapping by `stride`.

    Each token is owned by exactly one window: the overlap is split in the middle, so every
    owned token has at least `stride // 2` tokens of context on each inner side.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    if not 0 <= stride < max_tokens:
        raise ValueError("stride must be in [0, max_tokens)")
    if n_tokens <= 0:
        return []
    step = max_tokens - stride
    starts = [0]
    while starts[-1] + max_tokens < n_tokens:
        starts.append(starts[-1] + step)
    windows: list[TokenWindow] = []
    for i, s in enumerate(starts):
        e = min(s + max_tokens, n_tokens)
        own_start = 0 if i == 0 else windows[-1].own_end
        own_end = n_tokens if i == len(starts) - 1 else (starts[i + 1] + e + 1) // 2
        windows.append(TokenWindow(start=s, end=e, own_start=own_start, own_end=own_end))
    return windows
