"""OpenAI batch bodies run unchanged: every field is honoured, or refused by name with a
reason; none that would change the answer is silently dropped."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.errors import reason
from schemas.rows import OPENAI_IGNORED, OPENAI_NEUTRAL, OPENAI_SAMPLING, OpenAIRequest

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
          "required": ["city"], "additionalProperties": False}
# Every field of OpenAI's chat completions request body (API reference, 2025).
CHAT_FIELDS = {
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier",
    "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options"}
TEXT_FIELDS = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
    "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
    "suffix", "temperature", "top_p", "user"}


def request(body: dict[str, Any], url: str = CHAT) -> OpenAIRequest:
    return OpenAIRequest.model_validate(
        {"custom_id": "r1", "method": "POST", "url": url, "body": body})


def refusal(body: dict[str, Any], url: str = CHAT) -> str:
    with pytest.raises(ValidationError) as info:
        request(body, url)
    return reason(info.value)


def test_every_openai_field_has_a_decision() -> None:
    decided = (set(OPENAI_SAMPLING) | OPENAI_IGNORED | set(OPENAI_NEUTRAL)
               | {"messages", "prompt", "response_format", "best_of"})
    assert (CHAT_FIELDS | TEXT_FIELDS) - decided == set()


@pytest.mark.parametrize("field", sorted(OPENAI_NEUTRAL))
def test_a_field_that_cannot_be_honoured_is_accepted_only_when_it_asks_for_nothing(
        field: str) -> None:
    neutral, why = OPENAI_NEUTRAL[field]
    request({"messages": USER, field: neutral[0]})
    asking = {"logprobs": True, "top_logprobs": 5, "stream": True, "tools": [{"type": "x"}],
              "tool_choice": "required", "functions": [{"name": "f"}], "function_call": {"n": 1},
              "logit_bias": {"50256": -100}, "modalities": ["text", "audio"],
              "echo": True, "suffix": "end"}.get(field, {"some": "value"})
    text = refusal({"messages": USER, field: asking})
    assert text.startswith(f"body.{field}=") and why in text and "remove it" in text


def test_completions_logprobs_integer_is_refused_and_zero_accepted() -> None:
    request({"prompt": "Once", "logprobs": 0}, TEXT)
    assert refusal({"prompt": "Once", "logprobs": 3}, TEXT).startswith("body.logprobs=3 ")


def test_best_of_equal_to_n_is_accepted_and_more_refused() -> None:
    request({"prompt": "Once", "n": 2, "best_of": 2}, TEXT)
    assert "best_of" in refusal({"prompt": "Once", "best_of": 3}, TEXT)


def test_account_and_storage_fields_are_accepted() -> None:
    body = {"messages": USER, "model": "gpt-4o-mini", "user": "u", "metadata": {"a": "b"},
            "store": False, "service_tier": "auto", "prompt_cache_key": "k",
            "safety_identifier": "s", "parallel_tool_calls": True}
    assert request(body).payload() == {"url": CHAT, "sampling": {}, "messages": USER}


def test_sampling_fields_are_honoured() -> None:
    body = {"messages": USER, "temperature": 0.1, "top_p": 0.5, "max_completion_tokens": 9,
            "seed": 3, "n": 2, "stop": ["\n"], "presence_penalty": 0.5,
            "frequency_penalty": -0.5}
    assert request(body).payload()["sampling"] == {
        "temperature": 0.1, "top_p": 0.5, "max_tokens": 9, "seed": 3, "n": 2, "stop": ["\n"],
        "presence_penalty": 0.5, "frequency_penalty": -0.5}


def test_out_of_range_sampling_names_the_field() -> None:
    assert refusal({"messages": USER, "temperature": 5}).startswith("body.temperature:")


def test_response_format_json_schema_becomes_the_items_constraint() -> None:
    body = {"messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": SCHEMA}}}
    assert request(body).payload()["json_schema"] == SCHEMA


def test_response_format_json_object_constrains_to_any_object_and_text_to_nothing() -> None:
    obj = request({"messages": USER, "response_format": {"type": "json_object"}}).payload()
    assert obj["json_schema"] == {"type": "object"}
    text = request({"messages": USER, "response_format": {"type": "text"}}).payload()
    assert "json_schema" not in text


def test_a_bad_response_format_is_refused_by_name() -> None:
    assert "type 'xml'" in refusal({"messages": USER, "response_format": {"type": "xml"}})
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    text = refusal({"messages": USER, "response_format": bad})
    assert text.startswith("body.response_format.json_schema.schema is invalid")


def test_text_content_parts_are_joined_and_developer_is_a_system_turn() -> None:
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "name": "ann",
                 "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    assert request({"messages": messages}).payload()["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello\nthere"}]


def test_images_and_tool_turns_are_refused_by_name() -> None:
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert "only text parts" in refusal({"messages": image})
    tool = [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]
    assert refusal({"messages": tool}) == (
        "body.messages.0: field(s) not supported: tool_calls")
    assert refusal({"messages": [{"role": "tool", "content": "x"}]}).startswith(
        "body.messages.0.role:")
