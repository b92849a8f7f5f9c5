"""Every cheap check can pass and can fail, with a reason a person can act on; check
declarations are validated at submit, naming what is wrong; no check runs unbounded."""

from __future__ import annotations

import time
from typing import Any

import pytest

from quality import checks
from quality.checks import Answer, Verdict
from schemas.spec import JobSpec

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def verdict(name: str, answer: Answer, **params: object) -> Verdict:
    normalized = checks.validate(name, dict(params), "classify" if answer.labels else "generate")
    [v] = checks.run([(name, normalized)], answer)
    return v


@pytest.mark.parametrize(("name", "params", "good", "bad", "reason"), [
    ("non_empty", {}, Answer("Paris."), Answer("  \n"), "empty"),
    ("length", {"max": "5", "unit": "words"}, Answer("one two three"),
     Answer("one two three four five six"), "6 words, more than 5"),
    ("length", {"min": "20"}, Answer("a sentence that is long enough"), Answer("short"),
     "5 chars, fewer than 20"),
    ("not_truncated", {}, Answer("Done.", "stop"), Answer("And then", "length", 64),
     "cut off at the token budget (64 tokens)"),
    ("no_repetition", {}, Answer("The tide rises twice a day because the moon pulls the "
                                 "oceans toward it as the earth turns beneath."),
     Answer("I like the sea. " * 12), "repeat earlier ones"),
    ("json", {}, Answer('{"a": 1}'), Answer('{"a": 1'), "not valid JSON"),
    ("json_schema", {}, Answer('{"name": "Ada"}', json_schema=SCHEMA),
     Answer('{"age": 3}', json_schema=SCHEMA), "'name' is a required property"),
    ("regex", {"pattern": r"\d{4}"}, Answer("In 1969."), Answer("Long ago."), r"/\d{4}/"),
    ("forbid_regex", {"pattern": "(?i)lorem"}, Answer("Fine."), Answer("Lorem ipsum"),
     "contains 'Lorem'"),
    ("keywords", {"words": "moon|tide"}, Answer("The Moon drives the tide."),
     Answer("The sun is hot."), "missing 'moon', 'tide'"),
    ("no_refusal", {}, Answer("Tides are caused by the moon."),
     Answer("I'm sorry, but I can't help with that."), "refusal"),
    ("blocklist", {"words": "secret plan"}, Answer("A public plan."),
     Answer("Here is the SECRET PLAN."), "contains blocked 'secret plan'"),
    ("distinct", {}, Answer("a", samples=["A poem about the sea.", "Ten facts on bread."]),
     Answer("a", samples=["A poem about the sea.", "A poem about the sea!"]),
     "1 of 2 samples nearly repeat another"),
    ("label", {}, Answer("pos", label="pos", labels=["pos", "neg"]),
     Answer("maybe", labels=["pos", "neg"]), "'maybe' is not a label"),
    ("confidence", {"min": "0.6"},
     Answer("pos", label="pos", probabilities={"pos": 0.9, "neg": 0.1}, labels=["pos", "neg"]),
     Answer("pos", label="pos", probabilities={"pos": 0.55, "neg": 0.45},
            labels=["pos", "neg"]), "confidence 0.55 in 'pos' is below 0.6"),
])
def test_a_check_passes_a_good_answer_and_fails_a_bad_one_with_its_reason(
        name: str, params: dict[str, object], good: Answer, bad: Answer, reason: str) -> None:
    assert verdict(name, good, **params).passed is True
    failed = verdict(name, bad, **params)
    assert failed.passed is False
    assert reason in failed.reason


def at_submit(**spec: Any) -> JobSpec:
    return checks.validate_spec(JobSpec.model_validate(spec, context={"at_submit": True}),
                                at_submit=True)


def as_loaded(**spec: Any) -> JobSpec:
    """The spec as a worker loads it from SQL."""
    return checks.validate_spec(JobSpec.model_validate(spec))


def test_a_registered_check_is_named_like_a_built_in_one_and_given_its_parameters(
        registered: None) -> None:
    v = verdict("short_enough", Answer("twelve words " * 6), most="5")
    assert (v.name, v.passed, v.score) == ("short_enough", False, 12.0)
    assert v.reason == "12 words, more than 5"
    assert verdict("short_enough", Answer("two words"), most="5").passed is True
    said = verdict("mentions", Answer("No moon tonight."), word="sun")
    assert (said.name, said.passed, said.reason) == ("mentions", False, "never says 'sun'")


@pytest.mark.parametrize(("written", "message"), [
    ("spelling", "unknown check 'spelling' (known: non_empty, length"),
    ("length:mx=3", "check length: mx: unknown parameter"),
    ("length:max=many", "check length: max: Input should be a valid integer"),
    ("regex:pattern=(", "pattern does not compile"),
    ("confidence", "check 'confidence' does not apply to generate jobs"),
    ("json_schema", "check json_schema needs the job's --json-schema"),
    ("custom:fn=pydoc:pipepager,cmd=touch FILE",
     "custom checks are registered by the operator (entry point group 'nightshift.checks' "
     "or a module in NIGHTSHIFT_CHECK_MODULES)"),
    ("tests.quality.custom.short_enough", "unknown check 'tests.quality.custom.short_enough'"),
])
def test_a_wrong_check_is_refused_at_submit_naming_what_is_wrong(written: str,
                                                                  message: str) -> None:
    with pytest.raises(ValueError) as caught:
        at_submit(checks=[written])
    assert message in str(caught.value)


def test_a_check_not_built_in_nor_registered_is_refused_at_submit_and_kept_in_a_stored_spec(
        ) -> None:
    """Submit is strict; a worker reading the spec from SQL is not: the check stays as
    written, and fails each item's verdict (checks.run), never the chunk."""
    written: dict[str, Any] = {"checks": [{"name": "spelling", "params": {"lang": "en"}},
                                          "length:max=many", "length:max=9"]}
    with pytest.raises(checks.Refused, match="unknown check 'spelling'"):
        at_submit(**written)
    spec = as_loaded(**written)
    assert [c.refusal is not None for c in spec.checks] == [True, True, False]
    assert spec.check("spelling") is None  # nothing downstream acts on a refused check
    assert spec.check("length") == {"min": 0, "max": 9, "unit": "chars"}
    assert spec.check_list()[:2] == [("spelling", {"lang": "en"}), ("length", {"max": "many"})]
    assert "refusal" not in str(spec.model_dump())


def test_a_registered_check_is_refused_at_submit_given_a_parameter_it_does_not_take(
        registered: None) -> None:
    assert at_submit(checks=["short_enough:most=5"]).check("short_enough") == {"most": "5"}
    with pytest.raises(ValueError, match="check short_enough: got an unexpected keyword "
                                         "argument 'fewest'"):
        at_submit(checks=["short_enough:fewest=5"])
    with pytest.raises(ValueError, match="check mentions: missing a required argument"):
        at_submit(checks=["mentions"])


@pytest.mark.parametrize("name", ["regex", "forbid_regex"])
def test_a_pattern_that_backtracks_without_end_fails_its_item_within_its_time_limit(
        name: str) -> None:
    started = time.monotonic()
    v = verdict(name, Answer("a" * 40 + "b"), pattern="(a|aa)+$")
    assert v.passed is False
    assert f"ran past {checks.REGEX_SECONDS:g} s on this answer" in v.reason
    # `re` would take longer than the age of the universe; the bound is the limit's order.
    assert time.monotonic() - started < checks.REGEX_SECONDS * 10


def test_a_check_is_written_name_colon_parameters_and_a_value_may_hold_commas() -> None:
    spec = as_loaded(checks=["judge:min=3", r"regex:pattern=\d{1,3},ignore_case=true"])
    assert spec.check("judge") == {"min": 3.0, "criteria": checks.JUDGE_CRITERIA}
    assert spec.check("regex") == {"pattern": r"\d{1,3}", "ignore_case": True}


def test_a_blocklist_file_is_read_at_submit_so_every_worker_checks_the_same_words(
        tmp_path: object) -> None:
    from pathlib import Path

    words = Path(str(tmp_path)) / "blocked.txt"
    words.write_text("first thing\n\nsecond thing\n")
    spec = at_submit(checks=[f"blocklist:file={words}"])
    assert spec.check("blocklist") == {"words": ["first thing", "second thing"]}
    # What is stored is the words, so a worker without the file validates the same spec.
    assert as_loaded(**spec.model_dump()).check("blocklist") == spec.check("blocklist")


def test_a_stored_spec_naming_a_file_to_block_does_not_read_it_on_a_worker(
        tmp_path: object) -> None:
    from pathlib import Path

    secret = Path(str(tmp_path)) / "secret.txt"
    secret.write_text("the password\n")
    spec = as_loaded(checks=[f"blocklist:file={secret}"])
    [v] = checks.run(spec.check_list(), Answer("the password is safe"))
    assert v.passed is False and "read at submit" in v.reason
    assert "password" not in v.reason
