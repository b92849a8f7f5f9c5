"""The retry loop around the engine: answers checked as they arrive, retried along the
ladder without holding up the rest of the chunk, every attempt kept for the ledger.

The engine is a scripted stand-in (answers chosen per prompt and attempt, delivered
after a delay from another thread, like the engine's step thread); the tokenizer and
the checks are the real ones. That the ladder helps a real model is shown in
tests/e2e/test_quality.py.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from scripted import ScriptedHost

from quality import checks
from schemas.spec import JobSpec
from worker.engine import RequestRefused
from worker.generate import run_items


def _items(*prompts: str) -> list[tuple[int, str, dict[str, Any]]]:
    return [(i, f"k{i}", {"prompt": p}) for i, p in enumerate(prompts)]


class Voter(ScriptedHost):
    """A classifier stand-in: greedy requests answer "positive" with first-step
    probabilities `belief`; sampled ones (n > 1) answer the first n of `votes`."""

    def __init__(self, tokenizer: Any, belief: float, votes: list[str]) -> None:
        super().__init__(tokenizer, lambda p, a: ("", "", 0))
        pos, neg = (tokenizer.encode(w, add_special_tokens=False)[0]
                    for w in ("positive", "negative"))
        self.step = {pos: SimpleNamespace(logprob=math.log(belief)),
                     neg: SimpleNamespace(logprob=math.log(1 - belief))}
        self.votes = votes

    def submit(self, request_id: str, token_ids: list[int], params: Any, *,
               lora: str | None = None) -> Future[Any]:
        self.params.append(params)
        n = params.n or 1
        answers = self.votes[:n] if n > 1 else ["positive"]
        future: Future[Any] = Future()
        future.set_result(SimpleNamespace(outputs=[SimpleNamespace(
            text=v, finish_reason="stop", token_ids=[1], logprobs=[self.step])
            for v in answers]))
        return future


def test_a_truncated_answer_is_retried_with_a_larger_budget_and_the_passing_attempt_kept(
        tokenizer: Any) -> None:
    def script(prompt: str, attempt: int) -> tuple[str, str, float]:
        return ("a long ramble that got cut", "length", 0) if attempt == 1 else (
            "A short complete answer.", "stop", 0)

    host = ScriptedHost(tokenizer, script)
    spec = JobSpec(checks=["not_truncated"], sampling={"max_tokens": 40, "temperature": 0})
    [outcome] = run_items(host, spec, _items("Explain tides."), "job:0")  # type: ignore[arg-type]

    assert (outcome.status, outcome.quality, outcome.attempts, outcome.attempt) == (
        "succeeded", "passed", 2, 2)
    assert outcome.output == "A short complete answer."
    first, second = outcome.tries
    assert first.next_reason is not None and "not_truncated" in first.next_reason
    assert [v.passed for v in first.verdicts] == [False]
    assert second.sampling["max_tokens"] == 80  # the budget doubled after truncation
    assert second.sampling["temperature"] > 0  # a greedy job is not asked the same way again
    assert "at most" in second.prompt  # and told how long to be
    assert first.sampling["seed"] != second.sampling["seed"]


def test_an_item_that_never_passes_keeps_its_best_attempt_and_fails_quality_with_reasons(
        tokenizer: Any) -> None:
    def script(prompt: str, attempt: int) -> tuple[str, str, float]:
        return ("the the the the the the the the the the the the the the", "length", 0) \
            if attempt != 2 else ("the the the the the the the the the", "stop", 0)

    host = ScriptedHost(tokenizer, script)
    spec = JobSpec(checks=["not_truncated", "no_repetition"], max_attempts=3)
    [outcome] = run_items(host, spec, _items("Say something."), "job:0")  # type: ignore[arg-type]

    assert (outcome.status, outcome.quality, outcome.attempts) == ("failed", "failed", 3)
    assert outcome.attempt == 2  # one failed check is better than two
    assert outcome.error is not None and outcome.error.startswith("failed quality after 3")
    assert "no_repetition" in outcome.error
    assert [t.step for t in outcome.tries] == ["first", "resample", "feedback"]
    assert outcome.tries[-1].next_reason is None
    # After a repetition failure the retry carries a repetition penalty.
    assert outcome.tries[1].sampling["repetition_penalty"] > 1.0
    # The feedback step quotes the failed answer and says why it failed.
    assert "fell short" in outcome.tries[2].prompt
    assert outcome.tries[2].prompt.rstrip().endswith("The request: Say something.<|im_end|>\n"
                                                     "<|im_start|>assistant")


def test_the_judge_asks_one_yes_no_question_per_criterion_and_a_low_score_is_retried(
        tokenizer: Any) -> None:
    def script(prompt: str, attempt: int) -> tuple[str, str, float]:
        if "Reply Yes or No." in prompt:  # the judge: only the wrong answer is not correct
            return ("No" if "Spain" in prompt and "correct?" in prompt else "Yes", "stop", 0)
        return ("Paris is in Spain." if attempt == 1 else "Paris is in France.", "stop", 0)

    host = ScriptedHost(tokenizer, script)
    spec = checks.validate_spec(JobSpec(checks=["judge:min=4.5"], sampling={"temperature": 0}))
    [outcome] = run_items(host, spec, _items("Where is Paris?"), "job:0")  # type: ignore[arg-type]

    assert (outcome.quality, outcome.attempt, outcome.output) == (
        "passed", 2, "Paris is in France.")
    first, second = ([v for v in t.verdicts if v.name == "judge"][0] for t in outcome.tries)
    # Four criteria, each 1 + 4 * P(Yes): three yes and one no make a mean of 4.
    assert (first.passed, first.score, second.score) == (False, 4.0, 5.0)
    assert "accuracy 1.0" in first.reason and "judge" in (outcome.tries[0].next_reason or "")
    judged = [p for p in host.params
              if p.structured_outputs and p.structured_outputs.choice == ["Yes", "No"]]
    assert len(judged) == 8 and all(p.logprobs for p in judged)


def test_an_item_the_judge_never_passes_keeps_the_answer_it_scored_highest(
        tokenizer: Any) -> None:
    answers = {1: "Paris is big.", 2: "Paris is a place.", 3: "Paris is there."}

    def script(prompt: str, attempt: int) -> tuple[str, str, float]:
        if "Reply Yes or No." not in prompt:
            return answers[attempt], "stop", 0
        doubts = ("correct?",) if answers[1] in prompt else ("correct?", "respond to")
        return ("No" if any(d in prompt for d in doubts) else "Yes", "stop", 0)

    host = ScriptedHost(tokenizer, script)
    spec = checks.validate_spec(JobSpec(checks=["judge:min=4.5"], max_attempts=3,
                                        sampling={"temperature": 0}))
    [outcome] = run_items(host, spec, _items("Tell me about Paris."),  # type: ignore[arg-type]
                          "job:0")

    scores = [[v.score for v in t.verdicts if v.name == "judge"][0] for t in outcome.tries]
    assert scores == [4.0, 3.0, 3.0]
    # Each fails one check; the first scored highest, so it is kept over the later ones.
    assert (outcome.quality, outcome.attempt, outcome.output) == ("failed", 1, answers[1])


def test_a_retry_goes_to_the_engine_while_a_slow_neighbour_is_still_decoding(
        tokenizer: Any) -> None:
    def script(prompt: str, attempt: int) -> tuple[str, str, float]:
        if "slow" in prompt:
            return ("A fine slow answer.", "stop", 1.0)
        return ("", "stop", 0) if attempt == 1 else ("Now an answer.", "stop", 0)

    host = ScriptedHost(tokenizer, script)
    spec = JobSpec(checks=["non_empty"])
    outcomes = run_items(host, spec, _items("fast one", "slow one"),  # type: ignore[arg-type]
                         "job:0")

    assert [o.quality for o in outcomes] == ["passed", "passed"]
    assert host.events.index("submit 0#2") < host.events.index("answer 1#1")


def test_without_declared_checks_an_answer_is_taken_as_it_comes(tokenizer: Any) -> None:
    host = ScriptedHost(tokenizer, lambda p, a: ("cut", "length", 0))
    [outcome] = run_items(host, JobSpec(), _items("x"), "job:0")  # type: ignore[arg-type]
    assert (outcome.status, outcome.quality, outcome.attempts, outcome.checks) == (
        "succeeded", None, 1, None)


def test_a_lost_engine_raises_and_no_attempt_is_spent(tokenizer: Any) -> None:
    class Dead(ScriptedHost):
        def submit(self, request_id: str, token_ids: list[int], params: Any, *,
                   lora: str | None = None) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_exception(RuntimeError("engine core died"))
            return future

    with pytest.raises(RuntimeError, match="engine core died"):
        run_items(Dead(tokenizer, lambda p, a: ("", "", 0)),  # type: ignore[arg-type]
                  JobSpec(checks=["non_empty"]), _items("x"), "job:0")


def test_the_label_is_the_one_the_probabilities_put_first_not_the_greedy_token(
        tokenizer: Any) -> None:
    host = Voter(tokenizer, 0.45, [])  # greedy says "positive", its first step 0.45 / 0.55
    spec = JobSpec(kind="classify", labels=["positive", "negative"])
    [outcome] = run_items(host, spec, _items("meh"), "job:0")  # type: ignore[arg-type]

    assert (outcome.label, outcome.output) == ("negative", "negative")
    assert outcome.probabilities == {"positive": 0.45, "negative": 0.55}


def test_an_unconfident_label_is_decided_by_a_majority_of_samples(tokenizer: Any) -> None:
    host = Voter(tokenizer, 0.55, ["negative", "positive", "negative", "negative"])
    spec = JobSpec(kind="classify", labels=["positive", "negative"],
                   checks=["confidence:min=0.7,samples=4"], max_attempts=2)
    [outcome] = run_items(host, spec, _items("meh"), "job:0")  # type: ignore[arg-type]

    first, second = outcome.tries
    assert first.label == "positive" and first.probabilities == {"positive": 0.55,
                                                                 "negative": 0.45}
    assert second.step == "self_consistency" and host.params[1].n == 4
    assert host.params[1].temperature == 0.7
    assert second.label == "negative" and second.probabilities == {"positive": 0.25,
                                                                   "negative": 0.75}
    assert (outcome.quality, outcome.label, outcome.status) == ("passed", "negative", "succeeded")


def test_a_label_still_unconfident_after_its_budget_is_kept_for_review(tokenizer: Any) -> None:
    spec = JobSpec(kind="classify", labels=["positive", "negative"],
                   checks=["confidence:min=0.8,samples=4"], max_attempts=3)
    host = Voter(tokenizer, 0.6, ["positive", "negative"] * 2)
    [outcome] = run_items(host, spec, _items("meh"), "job:0")  # type: ignore[arg-type]
    assert (outcome.quality, outcome.status, outcome.attempts) == ("needs_review",
                                                                    "succeeded", 3)
    assert outcome.error is None and outcome.label in ("positive", "negative")


def test_a_check_that_raises_fails_its_item_with_the_exception_not_the_chunk(
        tokenizer: Any, registered: None) -> None:
    host = ScriptedHost(tokenizer, lambda p, a: ("an answer", "stop", 0))
    spec = JobSpec(checks=["broken"], max_attempts=1)
    [outcome] = run_items(host, spec, _items("x"), "job:0")  # type: ignore[arg-type]
    assert outcome.status == "failed" and "ZeroDivisionError" in (outcome.error or "")


def test_a_stored_spec_naming_a_check_not_registered_here_fails_its_items_at_once(
        tokenizer: Any) -> None:
    host = ScriptedHost(tokenizer, lambda p, a: ("an answer", "stop", 0))
    spec = JobSpec.model_validate({"checks": [{"name": "custom", "params": {"fn": "os:system"}}],
                                   "max_attempts": 2})
    outcomes = run_items(host, spec, _items("x", "y"), "job:0")  # type: ignore[arg-type]
    assert [(o.status, o.attempts) for o in outcomes] == [("failed", 1), ("failed", 1)]
    assert all("check 'custom' is not registered on this worker" in (o.error or "")
               for o in outcomes)


def test_a_retry_the_engine_refuses_fails_its_item_and_the_chunk_goes_on(
        tokenizer: Any) -> None:
    """As the real host does (worker.engine), the refusal comes back on the request's
    future; the item keeps its real answer, and fails naming the engine's reason."""
    class Picky(ScriptedHost):
        def submit(self, request_id: str, token_ids: list[int], params: Any, *,
                   lora: str | None = None) -> Future[Any]:
            if int(request_id.split(":")[3]) > 1 and "picky" in self.tokenizer.decode(token_ids):
                refused: Future[Any] = Future()
                refused.set_exception(RequestRefused("look-around is not supported"))
                return refused
            return super().submit(request_id, token_ids, params)

    host = Picky(tokenizer, lambda p, a: ("", "stop", 0) if a == 1 else ("fine", "stop", 0))
    outcomes = run_items(host, JobSpec(checks=["non_empty"], max_attempts=3),  # type: ignore[arg-type]
                         _items("picky one", "easy one"), "job:0")
    assert [o.status for o in outcomes] == ["failed", "succeeded"]
    picky = outcomes[0]
    assert picky.attempts == 3 and picky.attempt == 1
    assert picky.error == ("failed quality after 3 attempts: non_empty: the answer is empty; the "
                           "engine refused 2 of them: engine: the engine refused it: look-around "
                           "is not supported")

def test_a_tied_vote_goes_to_the_greedy_answers_label(tokenizer: Any) -> None:
    spec = JobSpec(kind="classify", labels=["negative", "positive"],
                   checks=["confidence:min=0.9,samples=4"], max_attempts=2)
    host = Voter(tokenizer, 0.55, ["negative", "positive", "negative", "positive"])
    [outcome] = run_items(host, spec, _items("meh"), "job:0")  # type: ignore[arg-type]
    assert outcome.tries[1].label == "positive" and outcome.quality == "needs_review"


def test_a_label_run_again_starts_with_self_consistency_numbered_after_the_night(
        tokenizer: Any) -> None:
    host = Voter(tokenizer, 0.55, ["negative", "negative", "positive", "negative"])
    spec = JobSpec(kind="classify", labels=["positive", "negative"],
                   checks=["confidence:min=0.7,samples=4"], max_attempts=1)
    [outcome] = run_items(host, spec, _items("meh"), "job:0",  # type: ignore[arg-type]
                          earlier={0: 2})
    [retried] = outcome.tries
    assert (retried.attempt, retried.step) == (3, "self_consistency")
    assert host.params[0].n == 4 and host.params[0].temperature == 0.7
    assert (outcome.label, outcome.quality, outcome.attempts, outcome.attempt) == (
        "negative", "passed", 3, 3)


def test_an_answer_run_again_is_asked_warmer_with_its_own_seed(tokenizer: Any) -> None:
    host = ScriptedHost(tokenizer, lambda prompt, attempt: ("An answer.", "stop", 0))
    spec = JobSpec(checks=["non_empty"], sampling={"temperature": 0.0})  # type: ignore[arg-type,list-item]
    [night] = run_items(host, spec, _items("Say hi."), "job:0")  # type: ignore[arg-type]
    [again] = run_items(host, spec, _items("Say hi."), "job:0",  # type: ignore[arg-type]
                        earlier={0: 1})
    first, retried = night.tries[0], again.tries[0]
    assert (retried.attempt, retried.step) == (2, "resample")
    assert retried.sampling["temperature"] > first.sampling["temperature"] == 0.0
    assert retried.sampling["seed"] != first.sampling["seed"]
