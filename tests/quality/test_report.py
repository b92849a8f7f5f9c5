"""`nightshift report` computes its figures from the results and the attempts ledger in
SQL, on SQLite and PostgreSQL alike; the HTML page stands alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Stack, lease

from producer.submit import submit
from quality import html
from quality import report as reports
from quality.checks import Verdict
from quality.metrics import expected_calibration_error
from schemas.settings import load
from schemas.spec import JobSpec
from worker.attempts import Outcome, Try
from worker.chunks import write

TRUNCATED = Verdict("not_truncated", False, None, "cut off at the token budget (48 tokens)")
FINE = Verdict("not_truncated", True)


def _try(n: int, verdict: Verdict, tokens: int = 10) -> Try:
    return Try(n, "first" if n == 1 else "resample", "p", {"seed": n}, 5, output=f"a{n}",
               finish_reason="length" if verdict.passed is False else "stop",
               completion_tokens=tokens, verdicts=[verdict],
               next_reason=None if verdict.passed else "not_truncated: cut off")


def _outcome(seq: int, tries: list[Try], metrics: dict[str, object] | None = None) -> Outcome:
    last_ok = next((t for t in tries if not t.failed), tries[-1])
    passed = not last_ok.failed
    return Outcome(seq, "succeeded" if passed else "failed", output=last_ok.output,
                   attempts=len(tries), attempt=last_ok.attempt,
                   quality="passed" if passed else "failed",
                   checks=[v.as_dict() for v in last_ok.verdicts], metrics=metrics,
                   completion_tokens=sum(t.completion_tokens for t in tries), tries=tries)


def test_the_report_counts_first_try_and_final_passes_attempts_and_failures(
        stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "reference": "a1"}) + "\n"
                            for i in range(4)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(checks=["not_truncated"], chunk_size=4), path).job_id
    write(stack.db_url, lease(stack.db_url, job, 0, "w"), [
        _outcome(0, [_try(1, FINE)], {"rouge_l": 1.0, "bleu": 1.0, "exact_match": True}),
        _outcome(1, [_try(1, TRUNCATED), _try(2, FINE, 20)],
                 {"rouge_l": 0.5, "bleu": 0.2, "exact_match": False}),
        _outcome(2, [_try(1, TRUNCATED), _try(2, TRUNCATED, 20), _try(3, TRUNCATED, 30)],
                 {"rouge_l": 0.0, "bleu": 0.0, "exact_match": False}),
        _outcome(3, [_try(1, FINE)], {"rouge_l": 0.5, "bleu": 0.4, "exact_match": False}),
    ])

    r = reports.build(stack.db_url, job)

    assert r["first_try_pass_rate"] == 0.5 and r["final_pass_rate"] == 0.75
    assert r["attempts_histogram"] == {"1": 2, "2": 1, "3": 1}
    assert r["failures_by_check"] == {"not_truncated": 1}
    assert r["first_try_failures_by_check"] == {"not_truncated": 2}
    assert r["failure_reasons"]["not_truncated"] == [
        ["cut off at the token budget (48 tokens)", 1]]
    assert r["tokens"] == {"first_try": 40, "retries": 70}
    assert (r["rouge_l"], r["bleu"], r["exact_match"]) == (0.5, 0.4, 0.25)
    assert r["state"] == "completed" and r["checks"] == ["not_truncated"]
    page = html.render(r)
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script" not in page
    assert "75.0%" in page


def test_the_html_header_counts_the_jobs_items(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(3)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=4), path).job_id

    page = html.render(reports.build(stack.db_url, job))

    assert " · 3 items ·" in page
    assert "built-in method" not in page


def test_a_job_nobody_submitted_is_named_in_the_error(stack: Stack) -> None:
    from schemas.errors import JobNotFound

    with pytest.raises(JobNotFound, match="no job 'nope'"):
        reports.build(stack.db_url, "nope")


def test_calibration_error_is_zero_when_confidence_matches_accuracy() -> None:
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == 0.0
    assert expected_calibration_error([1.0, 1.0], [False, False]) == 1.0
    assert round(expected_calibration_error([0.9, 0.6], [True, False]), 3) == 0.35
