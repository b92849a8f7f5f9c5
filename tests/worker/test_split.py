"""Splitting long documents by the demo model's own tokens (no engine)."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from worker.split import WORD_SLACK, Piece, split

CONTEXT = 2048  # the demo model's context
WORDS = ["river", "stone", "lantern", "quiet", "harbor", "meadow", "signal", "copper", "winter",
         "orchard", "ledger", "compass", "velvet", "thunder", "marble", "falcon", "ember",
         "glacier"]
SENTENCE_END = re.compile(r"[.!?。]$")


def sentence(rnd: random.Random, words: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(words)).capitalize() + rnd.choice(".!?")


def paragraph(rnd: random.Random, sentences: int) -> str:
    return " ".join(sentence(rnd, rnd.randint(4, 28)) for _ in range(sentences))


def tokens_of(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_invariants(text: str, pieces: list[Piece], tokenizer: Any, budget: int,
                     overlap: int) -> None:
    """What every caller relies on, whatever the text."""
    assert [p.index for p in pieces] == list(range(len(pieces)))
    covered = [False] * len(text)
    for p in pieces:
        assert p.text and p.text == text[p.start:p.end] and p.text == p.text.strip()
        assert 0 < p.tokens <= budget
        # Counted from the document's offsets; alone, a piece re-tokenizes within 2 tokens.
        assert abs(tokens_of(tokenizer, p.text) - p.tokens) <= 2
        covered[p.start:p.end] = [True] * (p.end - p.start)
    assert all(covered[i] or ch.isspace() for i, ch in enumerate(text))
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert a.start < b.start and a.end < b.end
        # Neighbours overlap, or meet across nothing but whitespace: no text is skipped.
        assert b.start < a.end or not text[a.end:b.start].strip()
        if not overlap:
            assert a.end <= b.start


@pytest.fixture(scope="module")
def long_document() -> str:
    """Paragraphs from one sentence to a few hundred tokens, several contexts long."""
    rnd = random.Random(7)
    return "\n\n".join(paragraph(rnd, rnd.choice([1, 2, 4, 8, 16])) for _ in range(220))


def test_long_document_pieces_fit_the_budget_cover_the_text_and_keep_order(
        tokenizer: Any, long_document: str) -> None:
    assert tokens_of(tokenizer, long_document) > 5 * CONTEXT
    for overlap in (0, 100):
        pieces = split(long_document, tokenizer, 1000, overlap=overlap)
        assert len(pieces) >= 10
        check_invariants(long_document, pieces, tokenizer, 1000, overlap)
        assert all((b.start < a.end) == bool(overlap)
                   for a, b in zip(pieces, pieces[1:], strict=False))


def test_the_document_is_tokenized_once(tokenizer: Any, long_document: str) -> None:
    calls = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return tokenizer(*args, **kwargs)

    assert len(split(long_document, counting, 500, overlap=50)) > 20
    assert len(calls) == 1 and calls[0]["return_offsets_mapping"]


def test_short_paragraphs_are_never_cut_inside(tokenizer: Any) -> None:
    rnd = random.Random(3)
    paragraphs = [paragraph(rnd, rnd.randint(1, 5)) for _ in range(120)]
    text = "\n\n".join(paragraphs)
    assert max(tokens_of(tokenizer, p) for p in paragraphs) < 400 / 2
    for overlap in (0, 40):
        pieces = split(text, tokenizer, 400, overlap=overlap)
        assert len(pieces) > 5
        for p in pieces:
            # Every piece ends where a paragraph ends, and starts at a sentence start.
            assert p.end == len(text) or text.startswith("\n\n", p.end)
            assert p.start == 0 or re.search(r"[.!?]\s+$", text[:p.start])
        if not overlap:
            assert all(p.text in paragraphs or "\n\n" in p.text for p in pieces)
            assert "\n\n".join(p.text for p in pieces) == text


def test_one_giant_paragraph_is_cut_at_sentence_ends(tokenizer: Any) -> None:
    rnd = random.Random(5)
    text = paragraph(rnd, 600)
    pieces = split(text, tokenizer, 700)
    check_invariants(text, pieces, tokenizer, 700, 0)
    assert len(pieces) > 5
    assert all(SENTENCE_END.search(p.text) for p in pieces)
    # The latest sentence end that fits: no piece could have taken the next sentence too.
    assert all(p.tokens > 700 - 40 for p in pieces[:-1])


def test_single_newlines_count_as_sentence_ends(tokenizer: Any) -> None:
    rnd = random.Random(9)
    lines = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 25))) for _ in range(300)]
    text = "\n".join(lines)
    pieces = split(text, tokenizer, 300)
    check_invariants(text, pieces, tokenizer, 300, 0)
    assert all(p.text.split("\n")[-1] in lines for p in pieces)


def test_a_sentence_longer_than_the_budget_is_cut_on_token_boundaries(tokenizer: Any) -> None:
    rnd = random.Random(11)
    giant = " ".join(rnd.choice(WORDS) for _ in range(3000)) + "."
    text = f"A short opening. {giant} A short ending."
    for overlap in (0, 30):
        pieces = split(text, tokenizer, 256, overlap=overlap)
        check_invariants(text, pieces, tokenizer, 256, overlap)
        assert pieces[0].text == "A short opening."
        inside = pieces[1:-1]
        assert len(inside) > 5
        assert all(p.tokens >= 256 - WORD_SLACK - 1 for p in inside[:-1])
        # Cuts fall between words when they can ("ember" is two tokens), never inside one.
        known = {*WORDS, giant.split()[-1], "opening.", "A", "short", "ending."}
        assert all(set(p.text.split()) <= known for p in pieces[1:])


def test_neighbours_share_the_overlap(tokenizer: Any, long_document: str) -> None:
    pieces = split(long_document, tokenizer, 800, overlap=120)
    shared = []
    for a, b in zip(pieces, pieces[1:], strict=False):
        common = long_document[b.start:a.end]
        assert a.text.endswith(common) and b.text.startswith(common)
        shared.append(tokens_of(tokenizer, common))
        # The overlap starts at a sentence (or paragraph) start when one is near.
        assert re.search(r"[.!?]\s+$", long_document[:b.start])
    assert all(0 < n <= 120 + 2 for n in shared)
    assert sum(shared) / len(shared) > 120 / 2


def test_unicode_text_keeps_character_offsets(tokenizer: Any) -> None:
    rnd = random.Random(13)
    chinese = "河流石头灯笼安静港口草地信号铜冬天果园"
    parts = []
    for i in range(400):
        if i % 3 == 0:
            parts.append("".join(rnd.choice(chinese) for _ in range(rnd.randint(5, 40))) + "。")
        else:
            parts.append(f"Café naïve — {sentence(rnd, rnd.randint(3, 12))[:-1]} 😀🚀 déjà vu.")
        if i % 7 == 6:
            parts.append("\n\n")
    text = "".join(p if p.endswith(("。", "\n")) else p + " " for p in parts)
    for overlap in (0, 50):
        pieces = split(text, tokenizer, 300, overlap=overlap)
        check_invariants(text, pieces, tokenizer, 300, overlap)
        assert len(pieces) > 5
        assert all(p.end == len(text.rstrip()) or SENTENCE_END.search(p.text) for p in pieces)


def test_whitespace_gives_no_pieces_and_a_short_text_one(tokenizer: Any) -> None:
    assert split("", tokenizer, 100) == []
    assert split(" \n\n\t  \n", tokenizer, 100) == []
    text = "\n  One paragraph.\n\nAnd another, both well within budget.  \n"
    (piece,) = split(text, tokenizer, 100, overlap=10)
    assert piece.text == text.strip() and text[piece.start:piece.end] == piece.text
    assert piece.index == 0 and piece.tokens == tokens_of(tokenizer, piece.text)


@pytest.mark.parametrize(("budget", "overlap", "message"), [
    (15, 0, "below the minimum 16"),
    (100, 50, "below half the budget"),
    (100, -1, "at least 0"),
])
def test_impossible_budgets_are_refused(tokenizer: Any, budget: int, overlap: int,
                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split("Some text.", tokenizer, budget, overlap=overlap)


def test_ragged_random_text_keeps_every_invariant(tokenizer: Any) -> None:
    """Runs of blank lines longer than the budget, lone punctuation, CRLF, CJK, emoji."""
    atoms = ["word", "longerword", "x", "中文字", "😀", "é", ".", "!", "?", "。", " ", "  ",
             "\n", "\n\n", "\n \n", "\t", "\r\n", '."', " " * 300, "\n" * 50, "ab-cd", "1.5"]
    weights = [30, 10, 5, 5, 2, 2, 4, 1, 1, 2, 40, 5, 4, 3, 1, 1, 1, 1, 0.05, 0.05, 2, 1]
    rnd = random.Random(17)
    for _ in range(80):
        text = "".join(rnd.choices(atoms, weights, k=rnd.randint(0, 3000)))
        budget = rnd.choice([16, 17, 30, 64, 200])
        overlap = rnd.randint(0, (budget - 1) // 2)
        check_invariants(text, split(text, tokenizer, budget, overlap=overlap), tokenizer, budget,
                         overlap)


def test_offsets_out_of_order_still_give_pieces_within_budget(tokenizer: Any,
                                                               long_document: str) -> None:
    """Offsets out of order (here every 7th token claims to start at 0) are made sorted by
    running maxima before they are bisected, so counts stay true to the token order."""
    def crossing(text: str, **kwargs: Any) -> dict[str, Any]:
        offsets = tokenizer(text, **kwargs)["offset_mapping"]
        return {"offset_mapping": [(0, e) if i % 7 == 6 else (s, e)
                                   for i, (s, e) in enumerate(offsets)]}

    text = long_document[:20000]
    pieces = split(text, crossing, 300, overlap=30)
    assert len(pieces) > 5 and pieces == split(text, crossing, 300, overlap=30)
    assert all(p.tokens <= 300 and p.text == text[p.start:p.end] for p in pieces)
    assert all(tokens_of(tokenizer, p.text) <= 300 + 2 for p in pieces)
    assert pieces[0].start == 0 and pieces[-1].end == len(text.rstrip())
    assert all(b.start < a.end for a, b in zip(pieces, pieces[1:], strict=False))
