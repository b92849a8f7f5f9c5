"""The quality bar on the real demo model: checks see real answers, the ladder raises the
pass rate, every attempt is in SQL, and the report tells the story.

Each test runs once on SQLite and once on PostgreSQL, with a real `nightshift worker`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Stack
from sqlalchemy import select

from schemas import db
from schemas.tables import Attempt, Result

ASKS = ["Explain {s} to a child.", "Write a short poem about {s}.",
        "Give three facts about {s}.", "Describe {s} in a paragraph.",
        "What is the history of {s}?", "Why do people like {s}?"]
SUBJECTS = ["the ocean", "the moon", "coffee", "volcanoes"]


def _prompts(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _ledger(stack: Stack, job_id: str) -> tuple[list[Result], list[Attempt]]:
    with db.session(stack.db_url) as session:
        results = list(session.scalars(select(Result).where(Result.job_id == job_id)
                                       .order_by(Result.item_seq)))
        attempts = list(session.scalars(select(Attempt).where(Attempt.job_id == job_id)
                                        .order_by(Attempt.item_seq, Attempt.attempt)))
        session.expunge_all()
    return results, attempts


def test_the_ladder_raises_the_pass_rate_and_every_attempt_is_in_sql(
        engine_stack: Stack, tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "prompt": a.format(s=s)}
            for i, (a, s) in enumerate((a, s) for s in SUBJECTS for a in ASKS)]
    path = _prompts(tmp_path / "open.jsonl", rows)
    # Greedy with a tight budget: the demo model is often cut off or loops on the first try.
    job = engine_stack.cli_json(
        "submit", str(path), "--json", "--temperature", "0", "--max-tokens", "48",
        "--check", "not_truncated", "--check", "no_repetition", "--max-attempts", "3",
        "--chunk-size", "12")["job_id"]
    assert engine_stack.wait_final(job, timeout=600)["state"] == "completed"

    report = engine_stack.cli_json("report", job, "--json")
    assert report["checked_items"] == len(rows)
    assert report["first_try_pass_rate"] < 0.9  # the bar bites on the first try...
    assert report["final_pass_rate"] > report["first_try_pass_rate"]  # ...and retries help
    assert report["tokens"]["retries"] > 0
    assert sum(report["attempts_histogram"].values()) == len(rows)

    results, attempts = _ledger(engine_stack, job)
    by_item: dict[int, list[Attempt]] = {}
    for a in attempts:
        by_item.setdefault(a.item_seq, []).append(a)
    for r in results:
        tries = by_item[r.item_seq]
        assert [a.attempt for a in tries] == list(range(1, r.attempts + 1))
        chosen = tries[r.attempt - 1]
        assert (chosen.output, chosen.passed) == (r.output, r.quality == "passed")
        # Every attempt but the last says why another followed; each has its own seed.
        assert all(a.next_reason for a in tries[:-1]) and tries[-1].next_reason is None
        assert len({a.sampling["seed"] for a in tries}) == len(tries)
        if r.quality == "failed":
            assert r.status == "failed" and r.attempts == 3
            assert all(a.passed is False for a in tries)
            assert r.error and any(v["name"] in r.error for v in r.checks if not v["passed"])
        else:
            assert r.status == "succeeded" and r.finish_reason != "length"

    html = tmp_path / "report.html"
    engine_stack.cli("report", job, "--html", str(html))
    assert "<svg" in html.read_text() and job in html.read_text()


def test_relevance_and_the_judge_score_real_answers_and_can_fail_them(
        engine_stack: Stack, tmp_path: Path) -> None:
    rows = [{"id": "capital", "prompt": "What is the capital of France? Answer in one sentence."},
            {"id": "tides", "prompt": "In two sentences, what causes ocean tides?"}]
    path = _prompts(tmp_path / "qa.jsonl", rows)
    lenient = engine_stack.cli_json(
        "submit", str(path), "--json", "--temperature", "0", "--max-tokens", "64",
        "--check", "relevance:min=0.2", "--check", "judge:min=1")["job_id"]
    strict = engine_stack.cli_json(
        "submit", str(path), "--json", "--temperature", "0", "--max-tokens", "64",
        "--check", "relevance:min=0.99", "--max-attempts", "2")["job_id"]
    for job in (lenient, strict):
        engine_stack.wait_final(job, timeout=400)

    passed, _ = _ledger(engine_stack, lenient)
    for r in passed:
        verdicts = {v["name"]: v for v in r.checks}
        assert r.quality == "passed", r.checks
        assert 0.2 <= verdicts["relevance"]["score"] <= 1.0
        assert 1.0 <= verdicts["judge"]["score"] <= 5.0  # the judge's constrained 1-5 scores
    failed, attempts = _ledger(engine_stack, strict)
    assert [r.quality for r in failed] == ["failed", "failed"]
    assert all("below 0.99" in (r.error or "") for r in failed)
    assert len(attempts) == 4  # two answers each, both in the ledger
    report = engine_stack.cli_json("report", strict, "--json")
    assert report["failures_by_check"] == {"relevance": 2}


def test_an_unconfident_label_is_retried_by_self_consistency_and_calibration_is_reported(
        engine_stack: Stack, tmp_path: Path) -> None:
    reviews = [("I loved every minute of it, wonderful!", "positive"),
               ("Terrible. I want my money back.", "negative"),
               ("It was fine, I guess. Nothing special.", "negative"),
               ("Best purchase I have made this year.", "positive")]
    rows = [{"id": f"r{i}", "prompt": text, "reference": gold}
            for i, (text, gold) in enumerate(reviews)]
    path = _prompts(tmp_path / "reviews.jsonl", rows)
    job = engine_stack.cli_json(
        "submit", str(path), "--json", "--kind", "classify", "--label", "positive",
        "--label", "negative", "--check", "confidence:min=0.999,samples=4",
        "--max-attempts", "2")["job_id"]
    engine_stack.wait_final(job, timeout=400)

    results, attempts = _ledger(engine_stack, job)
    retried = [a for a in attempts if a.attempt == 2]
    assert retried, "a 135M model is not 99.9% sure of every review"
    for a in retried:
        assert a.step == "self_consistency"
        assert len(a.samples or []) == 4 and set(a.samples or []) <= {"positive", "negative"}
        votes = a.probabilities or {}
        assert abs(sum(votes.values()) - 1.0) < 1e-6
        assert votes[a.label] == max(votes.values())  # the majority (ties: the greedy label)
    for r in results:
        assert r.quality in ("passed", "needs_review")
        assert r.status == "succeeded" and r.label in ("positive", "negative")
        assert set(r.probabilities or {}) == {"positive", "negative"}
    report = engine_stack.cli_json("report", job, "--json")
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["ece"] <= 1.0
    assert report["needs_review"] == sum(r.quality == "needs_review" for r in results)


def test_near_duplicate_samples_are_replaced_until_the_samples_differ(
        engine_stack: Stack, tmp_path: Path) -> None:
    path = _prompts(tmp_path / "poem.jsonl", [{"id": "p", "prompt": "Write a haiku about rain."}])
    # Near-greedy sampling gives three identical samples; the retry must make them distinct.
    job = engine_stack.cli_json(
        "submit", str(path), "--json", "-n", "3", "--temperature", "0.01", "--max-tokens", "32",
        "--check", "distinct", "--max-attempts", "3")["job_id"]
    engine_stack.wait_final(job, timeout=300)

    [result], attempts = _ledger(engine_stack, job)
    first = attempts[0]
    assert len(set(first.samples or [])) == 1 and first.passed is False
    assert attempts[1].step == "replace_duplicates"
    assert attempts[1].sampling["n"] == 2  # only the two duplicates are asked for again
    assert result.quality == "passed" and len(set(result.samples or [])) == 3
