"""JobSpec and Sampling: what a job may ask for, validated once at submit."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.settings import DEMO_MODEL
from schemas.spec import Example, JobSpec, Sampling


def test_default_spec_is_a_generate_job_on_the_demo_model() -> None:
    spec = JobSpec()
    assert spec.kind == "generate"
    assert spec.model == DEMO_MODEL
    assert spec.labels == []


def test_classify_with_one_label_is_rejected() -> None:
    with pytest.raises(ValidationError, match="at least two"):
        JobSpec(kind="classify", labels=["yes"])


def test_classify_with_two_labels_is_accepted() -> None:
    spec = JobSpec(kind="classify", labels=["yes", "no"])
    assert spec.labels == ["yes", "no"]


def test_duplicate_labels_are_rejected() -> None:
    with pytest.raises(ValidationError, match="distinct"):
        JobSpec(kind="classify", labels=["yes", "no", "yes"])


def test_blank_label_is_rejected() -> None:
    with pytest.raises(ValidationError, match="non-empty"):
        JobSpec(kind="classify", labels=["yes", "  "])


def test_template_that_does_not_compile_is_rejected_with_its_line() -> None:
    with pytest.raises(ValidationError, match=r"template does not compile.*\(line 2\)"):
        JobSpec(template="Hello\n{{ name ")


def test_template_that_compiles_is_kept() -> None:
    assert JobSpec(template="Summarize: {{ text }}").template == "Summarize: {{ text }}"


def test_unknown_spec_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="labelz"):
        JobSpec.model_validate({"labelz": ["a", "b"]})


def test_unknown_sampling_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="temprature"):
        Sampling.model_validate({"temprature": 0.1})


def test_unknown_example_field_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Example.model_validate({"input": "a", "output": "b", "note": "c"})


@pytest.mark.parametrize(
    "field", [{"temperature": 2.5}, {"top_p": 0.0}, {"max_tokens": 0}, {"n": 17}]
)
def test_sampling_out_of_range_is_rejected(field: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Sampling.model_validate(field)


def test_nested_sampling_is_parsed_from_a_dict() -> None:
    spec = JobSpec.model_validate({"sampling": {"temperature": 0.0, "seed": 7}})
    assert spec.sampling.temperature == 0.0
    assert spec.sampling.seed == 7
    assert spec.sampling.max_tokens == 256


def test_an_invalid_json_schema_is_refused_with_where_and_why() -> None:
    with pytest.raises(ValidationError, match="JSON Schema is invalid at properties/name"):
        JobSpec(json_schema={"type": "object", "properties": {"name": {"type": "text"}}})
    assert JobSpec(json_schema={"type": "object"}).json_schema == {"type": "object"}


def test_several_greedy_samples_are_refused_at_submit() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="n > 1 needs a temperature above 0"):
        JobSpec(sampling={"n": 3, "temperature": 0})


def test_checks_are_data_a_name_and_its_parameters_as_written() -> None:
    """Whether a check may run is the checks' own business (quality.checks.validate_spec):
    the spec keeps what was written, from `NAME[:key=value,...]` or an object."""
    spec = JobSpec(checks=[r"regex:pattern=\d{1,3},ignore_case=true",
                           {"name": "spelling", "params": {"lang": "en"}}])
    assert spec.check_list() == [("regex", {"pattern": r"\d{1,3}", "ignore_case": "true"}),
                                 ("spelling", {"lang": "en"})]
    with pytest.raises(ValidationError, match="check length: expected key=value, got 'max'"):
        JobSpec(checks=["length:max"])
