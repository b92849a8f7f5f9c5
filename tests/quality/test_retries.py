"""The retry policy alone: whether an item is asked again, and each retry shaped by what
failed (the plan for the next attempt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from quality import checks
from quality.checks import Verdict
from quality.retries import Step, decide, next_attempt
from schemas.spec import JobSpec

LOOP = Verdict("no_repetition", False, 0.8, "80% of its 4-word phrases repeat earlier ones")
CUT = Verdict("not_truncated", False, None, "cut off at the token budget (64 tokens)")


def test_a_cut_off_answer_gets_twice_the_budget_and_a_length_instruction() -> None:
    plan = next_attempt(JobSpec(checks=["not_truncated"]), 1, [CUT],
                        {"max_tokens": 64, "temperature": 0.0}, budget=1000)
    assert plan.step == Step.RESAMPLE and plan.sampling["max_tokens"] == 128
    assert plan.instruction == "Answer completely in at most 38 words."
    assert plan.sampling["temperature"] == 0.3  # greedy would repeat itself


def test_a_loop_gets_a_repetition_penalty_that_grows_with_each_retry() -> None:
    spec = JobSpec(checks=["no_repetition"])
    first = next_attempt(spec, 1, [LOOP], {"temperature": 0.7}, budget=1000)
    second = next_attempt(spec, 2, [LOOP], first.sampling, budget=1000)
    assert 1.0 < first.sampling["repetition_penalty"] < second.sampling["repetition_penalty"]
    assert second.step == Step.FEEDBACK and second.feedback is not None
    assert LOOP.reason in second.feedback


def test_the_constrain_step_asks_for_the_format_that_failed() -> None:
    spec = JobSpec(checks=["json"], ladder=["constrain"])
    plan = next_attempt(spec, 1, [Verdict("json", False, None, "not valid JSON")], {}, 500)
    assert plan.constrain == {"json_object": True}
    regex = JobSpec(checks=[r"regex:pattern=\d{4}"], ladder=["constrain"])
    plan = next_attempt(regex, 1, [Verdict("regex", False)], {}, 500)
    assert plan.constrain == {"regex": r"\d{4}"}


def test_the_budget_never_grows_past_what_the_context_leaves() -> None:
    plan = next_attempt(JobSpec(checks=["not_truncated"]), 1, [CUT], {"max_tokens": 400}, 500)
    assert plan.sampling["max_tokens"] == 500


def test_too_long_an_answer_is_asked_to_be_shorter() -> None:
    spec = checks.validate_spec(JobSpec(checks=["length:max=50,unit=words"]))
    plan = next_attempt(spec, 1, [Verdict("length", False, 80, "80 words, more than 50")],
                        {"max_tokens": 100}, 500)
    assert plan.instruction is not None and "max_tokens" not in plan.sampling


@dataclass
class Last:
    attempt: int
    failed: list[Verdict]
    sampling: dict[str, Any] = field(default_factory=dict)


def test_an_answer_that_passed_is_not_asked_again() -> None:
    assert decide(JobSpec(checks=["not_truncated"]), Last(1, []), answered=1, room=500) is None


def test_a_failed_answer_is_asked_again_until_the_job_has_its_max_attempts() -> None:
    spec = JobSpec(checks=["not_truncated"], max_attempts=3)
    plan = decide(spec, Last(2, [CUT], {"max_tokens": 64}), answered=2, room=500)
    assert plan is not None and plan.step == Step.FEEDBACK and plan.reason == CUT.name + ": " + (
        CUT.reason or "")
    assert decide(spec, Last(3, [CUT]), answered=3, room=500) is None


def test_no_retry_is_spent_on_a_check_no_answer_could_pass() -> None:
    spec = JobSpec(checks=["not_truncated"], max_attempts=3)
    cannot_run = Verdict("custom", False, reason="not registered", retryable=False)
    assert decide(spec, Last(1, [CUT, cannot_run]), answered=1, room=500) is None
    assert "retryable" not in cannot_run.as_dict()


def test_a_job_without_a_bar_gets_one_answer_whatever_failed() -> None:
    assert decide(JobSpec(max_attempts=3), Last(1, [CUT]), answered=1, room=500) is None


def test_an_unconfident_label_is_asked_for_k_samples_and_duplicates_are_replaced() -> None:
    classify = checks.validate_spec(JobSpec(kind="classify", labels=["a", "b"],
                                            checks=["confidence:samples=7"]))
    plan = decide(classify, Last(1, [Verdict("confidence", False)]), answered=1, room=500)
    assert plan is not None and plan.step == Step.SELF_CONSISTENCY and plan.sampling["n"] == 7
    spec = JobSpec(checks=["distinct"])
    plan = decide(spec, Last(1, [Verdict("distinct", False)], {"temperature": 0.7}),
                  answered=1, room=500)
    assert plan is not None and plan.step == Step.REPLACE_DUPLICATES
    assert plan.sampling["temperature"] == pytest.approx(0.8)
