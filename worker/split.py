"""A document longer than the model's context, cut into pieces that each fit.

The document is tokenized once, with character offsets, by the job's own tokenizer (a
Hugging Face fast tokenizer, or vLLM's wrapper of one); every cut is then chosen from
those offsets, so a million-character document costs one tokenizer pass plus a walk over
its boundaries, not a re-tokenization per candidate piece.

Cuts prefer, in order: a paragraph end (a blank line), a sentence end (`.`, `!`, `?`
followed by whitespace, optionally after a closing quote or bracket; `。！？` with or
without whitespace after; or a single newline), and only when one sentence is longer than
the budget, a token boundary inside it.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate, islice
from operator import gt
from typing import Any

from schemas.errors import ConfigError

MIN_BUDGET = 16
# A cut inside an over-long sentence moves back up to this many tokens to fall between words.
WORD_SLACK = 8

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"[.!?][\"'”’»)\]]*(\s+)|[。！？](\s*)|(\n\s*)")
_NOT_SPACE = re.compile(r"\S")
_SPACE = re.compile(r"\s+")


class SplitSettingError(ConfigError, ValueError):
    """A budget or overlap that cannot give pieces (a ValueError too, for plain callers)."""


@dataclass(frozen=True)
class Piece:
    index: int  # 0-based position in the document
    start: int  # char offset in the original text (inclusive)
    end: int  # char offset (exclusive); text == original[start:end]
    text: str
    tokens: int  # tokens of `text` by the given tokenizer, counted from the document's offsets


def split(text: str, tokenizer: Any, budget: int, *, overlap: int = 0) -> list[Piece]:
    """Pieces of at most `budget` tokens each, in document order.

    Cuts fall on the latest paragraph end that fills at least half the budget, else on
    the latest sentence end that keeps the piece within budget, else (a single sentence
    longer than the budget) on a token boundary, between words when one of the last few
    tokens starts a word. With `overlap`, piece k+1 starts about `overlap` tokens (at most
    half of piece k) before piece k ends, moved forward to a sentence start (else a word
    start) within the first half of that stretch, so a fact cut at a boundary is seen
    whole by one piece; without overlap, pieces meet at their cuts.

    Each piece is stripped of surrounding whitespace (so `start`/`end` skip the blank
    lines between pieces); together the pieces hold every non-whitespace character.
    Whitespace-only text gives []; a text within budget gives one piece, the stripped text.

    `tokens` counts the document's tokens that touch the piece's span. Re-tokenizing
    `text` on its own can differ by a token or two at its edges (a first word without
    its leading space may split differently), so callers with a hard limit should pass
    a budget a few tokens below it.
    """
    _check(budget, overlap)
    first = _NOT_SPACE.search(text)
    if first is None:
        return []
    doc = _Document(text, tokenizer)
    last = len(text.rstrip())
    pieces: list[Piece] = []
    start, prev_end = first.start(), first.start()
    while True:
        cut, resume = doc.cut(start, prev_end, last, budget)
        end = doc.rstrip(start, cut)
        pieces.append(Piece(len(pieces), start, end, text[start:end], doc.count(start, end)))
        if cut >= last:
            return pieces
        start, prev_end = doc.resume(start, end, resume, overlap, budget), end


def _check(budget: int, overlap: int) -> None:
    if budget < MIN_BUDGET:
        raise SplitSettingError(f"split budget {budget} tokens is below the minimum {MIN_BUDGET}")
    if overlap < 0 or 2 * overlap >= budget:
        raise SplitSettingError(
            f"overlap {overlap} tokens must be at least 0 and below half the budget ({budget})"
        )


class _Document:
    """One tokenization of the text and its boundaries, as sorted offset lists."""

    def __init__(self, text: str, tokenizer: Any) -> None:
        self.text = text
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, verbose=False)
        offsets = enc["offset_mapping"]
        self.starts = _sorted([s for s, _ in offsets])
        self.ends = _sorted([e for _, e in offsets])
        self.paragraphs = _gaps(_PARAGRAPH.finditer(text), whole=True)
        self.sentences = _gaps(_SENTENCE.finditer(text), whole=False)
        self.sentence_starts = self.sentences[1]

    def count(self, start: int, end: int) -> int:
        """Tokens whose span touches [start, end): straddling tokens count on both sides."""
        return bisect_left(self.starts, end) - bisect_right(self.ends, start)

    def cut(self, start: int, prev_end: int, last: int, budget: int) -> tuple[int, int]:
        """Where the piece from `start` ends, and where the text after its cut resumes."""
        first_token = bisect_right(self.ends, start)
        if first_token + budget >= len(self.starts):
            return last, last
        after = max(start, self.lstrip(prev_end))
        limit = max(self.starts[first_token + budget], after + 1)
        para = _latest(self.paragraphs, after, limit)
        if para is not None and 2 * self.count(start, para[0]) >= budget:
            return para
        sentence = _latest(self.sentences, after, limit)
        if sentence is not None:
            return sentence
        word = self.word_start(max(after, self.starts[first_token + budget - WORD_SLACK]), limit)
        return word, word

    def word_start(self, low: int, limit: int) -> int:
        """The last whitespace in (low, limit], so a token cut keeps whole words if it can."""
        for at in range(min(limit, len(self.text) - 1), low, -1):
            if self.text[at].isspace():
                return at
        return limit

    def resume(self, start: int, end: int, after_cut: int, overlap: int, budget: int) -> int:
        """Where the next piece starts: `overlap` tokens back from `end`, or after the cut."""
        end_token = bisect_left(self.starts, end)
        back = min(overlap, (end_token - bisect_right(self.ends, start)) // 2)
        plain = self.lstrip(after_cut)
        if back == 0:
            return plain
        back_from = self.lstrip(self.starts[end_token - back])
        i = bisect_left(self.sentence_starts, back_from)
        sentence = self.lstrip(self.sentence_starts[i]) if i < len(self.sentence_starts) else end
        gap = _SPACE.search(self.text, back_from - 1, end)
        word = gap.end() if gap else end
        for near in (sentence, word):
            if near < end and 2 * self.count(near, end) >= back:
                back_from = near
                break
        # A long run of whitespace after the cut would leave the next piece no room to grow.
        if not start < back_from < end or self.count(back_from, plain + 1) >= budget:
            return plain
        return back_from

    def lstrip(self, at: int) -> int:
        found = _NOT_SPACE.search(self.text, at)
        return found.start() if found else len(self.text)

    def rstrip(self, start: int, end: int) -> int:
        while end > start and self.text[end - 1].isspace():
            end -= 1
        return end


def _sorted(offsets: list[int]) -> list[int]:
    """Offsets made non-decreasing (running maximum), so they can be bisected.

    Left-to-right tokenizers give sorted offsets already; the check is cheaper than the
    running maximum, which only a tokenizer with offsets out of order would need."""
    if any(map(gt, offsets, islice(offsets, 1, None))):
        return list(accumulate(offsets, max))
    return offsets


def _gaps(matches: Any, whole: bool) -> tuple[list[int], list[int]]:
    """Each boundary as (end of the text before it, start of the text after it)."""
    ends: list[int] = []
    resumes: list[int] = []
    for m in matches:
        # A sentence match has exactly one group: the whitespace after its end mark.
        start, end = m.span() if whole else m.span(m.lastindex)
        ends.append(start)
        resumes.append(end)
    return ends, resumes


def _latest(gaps: tuple[list[int], list[int]], after: int, limit: int) -> tuple[int, int] | None:
    """The last boundary ending the text in (after, limit], as (end, resume)."""
    ends, resumes = gaps
    i = bisect_right(ends, limit) - 1
    if i < 0 or ends[i] <= after:
        return None
    return ends[i], resumes[i]
