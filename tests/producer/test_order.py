"""Prefix-aware order: rows that share a long beginning are cut into the same chunks,
and a file that is already grouped, or whose rows share nothing, keeps its own order."""

from __future__ import annotations

from typing import Any

from producer.order import Keys

DOCUMENTS = [f"Document {d}. " + f"Clause {d} says the rent is due monthly. " * 60
             for d in range(6)]
QUESTIONS = [f"Question {q}: what does clause {q} say?" for q in range(4)]


def _keys(rows: list[dict[str, Any]]) -> Keys:
    keys = Keys()
    for row in rows:
        keys.add(row)
    return keys


def _asked(d: int, q: int, *, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [
        {"role": "user", "content": f"{DOCUMENTS[d]}\n\n{QUESTIONS[q]}"}]}


def test_questions_asked_in_question_order_are_cut_into_chunks_by_document() -> None:
    rows = [_asked(d, q) for q in range(4) for d in range(6)]  # as files usually come
    chunks = _keys(rows).chunks(4)
    assert chunks is not None
    by_document = {d: {int(chunks[q * 6 + d]) for q in range(4)} for d in range(6)}
    assert all(len(cut) == 1 for cut in by_document.values())  # a document: one chunk
    assert len({cut.pop() for cut in by_document.values()}) == 6


def test_a_long_system_prompt_shared_by_every_row_does_not_hide_the_documents() -> None:
    system = "You read leases for a property manager and answer in one line. " * 40
    rows = [_asked(d, q, system=system) for q in range(4) for d in range(6)]
    chunks = _keys(rows).chunks(4)
    assert chunks is not None
    assert all(len({int(chunks[q * 6 + d]) for q in range(4)}) == 1 for d in range(6))


def test_rows_asking_the_same_keep_their_input_order_side_by_side() -> None:
    rows = [_asked(d, 0) for _ in range(4) for d in range(3)]
    chunks = _keys(rows).chunks(2)
    assert chunks is not None
    for d in range(3):  # rows d, d+3, d+6, d+9: two chunks, in input order
        cut = [int(chunks[d + 3 * k]) for k in range(4)]
        assert cut[0] == cut[1] and cut[2] == cut[3] and cut[1] + 1 == cut[2]


def test_a_file_already_grouped_by_document_keeps_its_order() -> None:
    rows = [_asked(d, q) for d in range(6) for q in range(4)]
    assert _keys(rows).chunks(4) is None


def test_rows_that_share_nothing_keep_their_order_even_under_a_shared_system_prompt() -> None:
    system = "Answer briefly and plainly, in English, without preamble. " * 20
    rows = [{"messages": [{"role": "system", "content": system},
                          {"role": "user", "content": f"Write a haiku about the number {i}."}]}
            for i in range(2_000)]
    rows += [{"prompt": f"Translate to French: sentence number {i}"} for i in range(2_000)]
    assert _keys(rows).chunks(64) is None


def test_prompts_and_document_texts_are_keyed_as_messages_are() -> None:
    rows = [{"prompt": f"{DOCUMENTS[d]}\n\n{QUESTIONS[q]}"} for q in range(3) for d in range(3)]
    chunks = _keys(rows).chunks(3)
    assert chunks is not None
    assert all(len({int(chunks[q * 3 + d]) for q in range(3)}) == 1 for d in range(3))
