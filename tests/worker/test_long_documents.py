"""Documents longer than the context: split by the model's tokens, answered piece by
piece, combined (recursively when the answers do not fit one prompt), every part kept.

The engine is the scripted stand-in with a small context, so that a few pages are
"long"; the tokenizer and the splitting are real. tests/e2e/test_document_folder.py runs
a long document through the real engine.
"""

from __future__ import annotations

from typing import Any

import pytest
from scripted import ScriptedHost

from schemas import render as render_module
from schemas.spec import JobSpec
from worker.generate import run_items

PARAGRAPH = ("The harbour town kept its old lighthouse running long after ships had radar. "
             "Each evening the keeper climbed the stairs, trimmed the wick and logged the "
             "weather in a book that now fills a shelf of the museum. ")


def _document(paragraphs: int, key: str = "report") -> tuple[int, str, dict[str, Any]]:
    text = "\n\n".join(f"Section {i}. " + PARAGRAPH * 2 for i in range(paragraphs))
    return (0, key, {"text": text, "document": f"docs/{key}.txt", "path": f"{key}.txt",
                     "pages": None, "size": len(text), "sha256": "x"})


def _host(tokenizer: Any, context: int, answer: Any) -> ScriptedHost:
    host = ScriptedHost(tokenizer, lambda prompt, attempt: (answer(prompt), "stop", 0))
    host.max_model_len = context  # type: ignore[misc]
    return host


def test_a_long_document_is_split_answered_per_piece_and_combined_into_one_answer(
        tokenizer: Any) -> None:
    def answer(prompt: str) -> str:
        return "THE SUMMARY" if "Combine them" in prompt else "a piece's summary"

    host = _host(tokenizer, 512, answer)
    spec = JobSpec(template="Summarize:\n\n{{ text }}", sampling={"max_tokens": 64})
    [outcome] = run_items(host, spec, [_document(12)], "job:0")  # type: ignore[arg-type]

    assert outcome.status == "succeeded" and outcome.output == "THE SUMMARY"
    assert outcome.pieces is not None and outcome.pieces >= 3
    maps = [p for p in outcome.parts if p["kind"] == "map"]
    [final] = [p for p in outcome.parts if p["kind"] == "reduce"]
    assert [p["piece"] for p in maps] == list(range(1, outcome.pieces + 1))
    assert maps[0]["start_char"] == 0 and maps[-1]["end_char"] >= len(_document(12)[2]["text"]) - 2
    assert all(a["start_char"] < b["end_char"] for a, b in zip(maps, maps[1:], strict=False))
    assert final["piece"] == 0 and final["inputs"] == [p["piece"] for p in maps]
    # Every request fits the context, and each piece's prompt is the job's own template.
    assert all(len(tokenizer.encode(t)) + 64 <= 512 for t in (x.prompt for x in outcome.tries))
    assert {t.piece for t in outcome.tries} == {0, *range(1, outcome.pieces + 1)}
    assert all(t.prompt.count("Summarize:") == 1 for t in outcome.tries if t.piece)


def test_answers_too_long_to_combine_at_once_are_combined_in_levels(tokenizer: Any) -> None:
    long_answer = " ".join(["the keeper logged the weather"] * 30)  # ~150 tokens each

    def answer(prompt: str) -> str:
        return "FINAL" if "Combine them" in prompt and prompt.count("Part ") <= 3 else (
            long_answer)

    host = _host(tokenizer, 640, answer)
    spec = JobSpec(template="Summarize:\n\n{{ text }}", sampling={"max_tokens": 96})
    [outcome] = run_items(host, spec, [_document(20)], "job:0")  # type: ignore[arg-type]

    reduces = [p for p in outcome.parts if p["kind"] == "reduce"]
    middle = [p for p in reduces if p["piece"] != 0]
    [final] = [p for p in reduces if p["piece"] == 0]
    assert middle, "the pieces' answers did not fit one combining prompt"
    assert final["inputs"] == [p["piece"] for p in middle]
    covered = sorted(i for p in middle for i in p["inputs"])
    assert covered == list(range(1, outcome.pieces + 1))


def test_a_failed_piece_is_left_out_and_the_document_result_says_so(tokenizer: Any) -> None:
    def answer(prompt: str) -> str:
        if "Combine them" in prompt:
            return f"combined from {prompt.count('Part ')} parts"
        return "" if "Section 5." in prompt else "fine"

    host = _host(tokenizer, 512, answer)
    spec = JobSpec(template="Summarize:\n\n{{ text }}", checks=["non_empty"], max_attempts=1,
                   sampling={"max_tokens": 64})
    [outcome] = run_items(host, spec, [_document(12)], "job:0")  # type: ignore[arg-type]

    failed = [p["piece"] for p in outcome.parts if p["kind"] == "map" and p["status"] == "failed"]
    assert failed
    assert outcome.status == "succeeded" and outcome.quality == "passed"
    assert outcome.error is not None and "were left out" in outcome.error
    assert f"pieces {', '.join(map(str, failed))}" in outcome.error
    [final] = [p for p in outcome.parts if p["piece"] == 0]
    assert not set(failed) & set(final["inputs"])


def test_per_piece_mode_keeps_one_answer_per_piece(tokenizer: Any) -> None:
    host = _host(tokenizer, 512, lambda prompt: f"about section {prompt.count('Section')}")
    spec = JobSpec(template="Summarize:\n\n{{ text }}", split="per_piece",
                   sampling={"max_tokens": 64})
    [outcome] = run_items(host, spec, [_document(12)], "job:0")  # type: ignore[arg-type]

    assert outcome.status == "succeeded"
    assert [p["kind"] for p in outcome.parts] == ["map"] * (outcome.pieces or 0)
    assert all(p["output"].startswith("about section") for p in outcome.parts)
    assert not any("Combine them" in t.prompt for t in outcome.tries)


def test_a_document_that_fits_is_one_ordinary_item(tokenizer: Any) -> None:
    host = _host(tokenizer, 2048, lambda prompt: "short")
    [outcome] = run_items(host, JobSpec(), [_document(1)], "job:0")  # type: ignore[arg-type]
    assert (outcome.output, outcome.pieces, outcome.parts) == ("short", None, [])


def test_a_document_is_asked_with_the_jobs_template_over_its_one_stored_text(
        tokenizer: Any) -> None:
    host = _host(tokenizer, 2048, lambda prompt: "short")
    spec = JobSpec(template="Summarize {{ name }} ({{ path }}):\n\n{{ text }}")
    seq, key, payload = _document(1)
    [outcome] = run_items(host, spec, [(seq, key, payload)], "job:0")  # type: ignore[arg-type]
    assert outcome.output == "short"
    [sent] = [t.prompt for t in outcome.tries]
    assert f"Summarize report (report.txt):\n\n{payload['text']}" in sent


def test_a_document_stored_with_its_prompt_runs_with_that_prompt(tokenizer: Any) -> None:
    """Items written before the payload dropped its rendered prompt still run as submitted."""
    host = _host(tokenizer, 2048, lambda prompt: "short")
    seq, key, payload = _document(1)
    payload["prompt"] = "Stored prompt: " + payload["text"]
    spec = JobSpec(template="Summarize:\n\n{{ text }}")
    [outcome] = run_items(host, spec, [(seq, key, payload)], "job:0")  # type: ignore[arg-type]
    assert outcome.status == "succeeded" and "Stored prompt: Section 0." in outcome.tries[0].prompt


def test_a_template_that_runs_away_fails_its_document_alone(
        tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_module, "RENDER_SECONDS", 0.2)
    host = _host(tokenizer, 2048, lambda prompt: "short")
    spec = JobSpec(template="{% for i in range(size) %}{% for j in range(size) %}{% endfor %}"
                            "{% endfor %}{{ text }}")
    calm, wild = _document(1, "calm"), _document(1, "wild")
    calm[2]["size"], wild[2]["size"] = 1, 100_000
    outcomes = run_items(host, spec, [calm, (1, "wild", wild[2])], "job:0")  # type: ignore[arg-type]
    assert {o.item_seq: (o.status, o.error) for o in outcomes} == {
        0: ("succeeded", None), 1: ("failed", "template: rendering took longer than 0.2 s")}
