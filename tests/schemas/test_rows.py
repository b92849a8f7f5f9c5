"""Input row models: prompt rows, OpenAI batch requests, and the reason a row is bad."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.errors import reason
from schemas.rows import OpenAIRequest, PromptRow

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Hi"}]


def request(body: dict[str, Any], url: str = CHAT) -> OpenAIRequest:
    return OpenAIRequest.model_validate(
        {"custom_id": "r1", "method": "POST", "url": url, "body": body}
    )


def failure(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return reason(info.value)


def test_prompt_row_accepts_a_prompt() -> None:
    assert PromptRow.model_validate({"id": "a", "prompt": "Hi"}).prompt == "Hi"


def test_prompt_row_accepts_messages() -> None:
    row = PromptRow.model_validate({"messages": USER})
    assert row.messages is not None and row.messages[0].content == "Hi"


def test_prompt_row_numeric_id_becomes_a_string() -> None:
    assert PromptRow.model_validate({"id": 7, "prompt": "Hi"}).id == "7"


def test_prompt_row_with_both_prompt_and_messages_is_rejected() -> None:
    assert "exactly one of" in failure(PromptRow, {"prompt": "Hi", "messages": USER})


def test_prompt_row_without_prompt_or_messages_is_rejected() -> None:
    assert "exactly one of" in failure(PromptRow, {"id": "a"})


def test_prompt_row_with_empty_prompt_is_rejected() -> None:
    assert failure(PromptRow, {"prompt": ""}).startswith("prompt:")


def test_prompt_row_unknown_field_is_reported_by_name() -> None:
    assert failure(PromptRow, {"prompt": "Hi", "promt": "x"}) == "promt: unknown field"


def test_message_with_unknown_role_is_rejected() -> None:
    bad = {"messages": [{"role": "tool", "content": "x"}]}
    assert failure(PromptRow, bad).startswith("messages.0.role:")


def test_chat_request_payload_carries_messages_and_sampling() -> None:
    payload = request({"messages": USER, "temperature": 0.2, "model": "x"}).payload()
    assert payload == {"url": CHAT, "sampling": {"temperature": 0.2}, "messages": USER}


def test_max_completion_tokens_maps_to_max_tokens() -> None:
    assert request({"messages": USER, "max_completion_tokens": 12}).sampling() == {
        "max_tokens": 12
    }


def test_null_sampling_values_are_left_out() -> None:
    assert request({"messages": USER, "seed": None, "top_p": 0.5}).sampling() == {"top_p": 0.5}


def test_completions_request_payload_is_a_raw_prompt() -> None:
    payload = request({"prompt": "Once upon", "max_tokens": 5}, url="/v1/completions").payload()
    assert payload == {
        "url": "/v1/completions",
        "sampling": {"max_tokens": 5},
        "prompt": "Once upon",
        "raw": True,
    }


def test_unsupported_body_fields_are_rejected_by_name() -> None:
    with pytest.raises(ValidationError, match="not supported: frobnicate, logprob"):
        request({"messages": USER, "logprob": True, "frobnicate": 1})


def test_chat_body_without_messages_is_rejected() -> None:
    with pytest.raises(ValidationError, match="needs 'messages'"):
        request({"prompt": "Hi"})


def test_completions_body_with_a_list_prompt_is_rejected() -> None:
    with pytest.raises(ValidationError, match="one string"):
        request({"prompt": ["a", "b"]}, url="/v1/completions")


def test_chat_body_with_a_bad_message_is_rejected() -> None:
    with pytest.raises(ValidationError):
        request({"messages": [{"role": "user"}]})


def test_out_of_range_body_sampling_is_rejected() -> None:
    with pytest.raises(ValidationError):
        request({"messages": USER, "temperature": 5})


def test_unknown_url_and_method_are_rejected() -> None:
    bad = {"custom_id": "r", "method": "GET", "url": "/v1/embeddings", "body": {}}
    with pytest.raises(ValidationError) as info:
        OpenAIRequest.model_validate(bad)
    assert {e["loc"][0] for e in info.value.errors()} >= {"method", "url"}


def test_reason_of_a_plain_value_error_is_its_message() -> None:
    assert reason(ValueError("boom")) == "boom"


def test_reason_counts_the_errors_it_does_not_show() -> None:
    text = failure(OpenAIRequest, {"custom_id": "", "method": "GET", "url": CHAT, "body": {}})
    assert text.startswith("custom_id:")
    assert text.endswith("(+1 more)")


def test_reason_strips_the_value_error_prefix() -> None:
    text = failure(PromptRow, {"id": "a"})
    assert not text.startswith("Value error")
    assert text == "a row needs exactly one of 'prompt' or 'messages'"


def test_openai_stop_may_be_a_single_string() -> None:
    assert request({"messages": USER, "stop": "\n"}).sampling()["stop"] in ("\n", ["\n"])
