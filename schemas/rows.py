"""Input rows: what one line of an input file may say, and the payload it becomes.

One bad row is one error with its line number; the models here decide what "bad"
means. Only the fields a format names are accepted, so a misspelt field is
reported instead of silently ignored.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import reason
from schemas.spec import Sampling


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class PromptRow(BaseModel):
    """`{"id", "prompt"}` or `{"id", "messages"}`, optionally with a reference answer."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    id: str | None = None
    prompt: str | None = Field(None, min_length=1)
    messages: list[Message] | None = Field(None, min_length=1)
    reference: str | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_of_prompt_or_messages(self) -> PromptRow:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a row needs exactly one of 'prompt' or 'messages'")
        return self


# Every field of an OpenAI `/v1/chat/completions` or `/v1/completions` body is either
# honoured, or refused by name with the reason; none is silently dropped if it would
# change the answer.
# Sampling fields an OpenAI body may carry and how they map onto ours.
OPENAI_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "seed": "seed",
    "n": "n",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# Body fields about the account, caching, storage or tools that are never called: they
# change nothing about the answer and are accepted as they are.
OPENAI_IGNORED = {"model", "user", "metadata", "store", "service_tier", "prompt_cache_key",
                  "prompt_cache_retention", "safety_identifier", "parallel_tool_calls"}
# Fields nightshift cannot honour: accepted only at a value that asks for nothing.
OPENAI_NEUTRAL: dict[str, tuple[tuple[Any, ...], str]] = {
    "logprobs": ((None, False, 0), "token log-probabilities are not returned"),
    "top_logprobs": ((None, 0), "token log-probabilities are not returned"),
    "stream": ((None, False), "batch results are not streamed"),
    "stream_options": ((None,), "batch results are not streamed"),
    "tools": ((None, []), "tool calling is not supported"),
    "tool_choice": ((None, "none", "auto"), "tool calling is not supported"),
    "functions": ((None, []), "function calling is not supported"),
    "function_call": ((None, "none", "auto"), "function calling is not supported"),
    "logit_bias": ((None, {}), "its keys are token ids of another model's tokenizer"),
    "modalities": ((None, ["text"]), "only text is generated"),
    "audio": ((None,), "only text is generated"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "web_search_options": ((None,), "web search is not supported"),
    "reasoning_effort": ((None,), "not a setting of the models nightshift runs"),
    "verbosity": ((None,), "not a setting of the models nightshift runs"),
    "echo": ((None, False), "the prompt is not echoed back"),
    "suffix": ((None, ""), "insertion (suffix) is not supported"),
}
OPENAI_URLS = ("/v1/chat/completions", "/v1/completions")
MESSAGE_FIELDS = {"role", "content", "name"}


class OpenAIRequest(BaseModel):
    """One line of an OpenAI Batch API input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1)
    method: Literal["POST"]
    url: Literal["/v1/chat/completions", "/v1/completions"]
    body: dict[str, Any]

    @model_validator(mode="after")
    def _body_fits_url(self) -> OpenAIRequest:
        text_field = "messages" if self.url == "/v1/chat/completions" else "prompt"
        if text_field not in self.body:
            raise ValueError(f"body of {self.url} needs '{text_field}'")
        allowed = ({text_field, "response_format", "best_of"} | OPENAI_IGNORED
                   | set(OPENAI_SAMPLING) | set(OPENAI_NEUTRAL))
        unsupported = sorted(set(self.body) - allowed)
        if unsupported:
            raise ValueError(f"body field(s) not supported: {', '.join(unsupported)}")
        _refuse_what_cannot_be_honoured(self.body)
        if text_field == "messages":
            openai_messages(self.body["messages"])
        elif not isinstance(self.body["prompt"], str):
            raise ValueError("body.prompt must be one string")
        response_schema(self.body.get("response_format"))
        try:
            Sampling.model_validate(self.sampling())
        except ValidationError as exc:
            raise ValueError(f"body.{reason(exc)}") from None
        return self

    def sampling(self) -> dict[str, Any]:
        return {ours: self.body[theirs] for theirs, ours in OPENAI_SAMPLING.items()
                if theirs in self.body and self.body[theirs] is not None}

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"url": self.url, "sampling": self.sampling()}
        if self.url == "/v1/chat/completions":
            payload["messages"] = openai_messages(self.body["messages"])
        else:
            payload.update(prompt=self.body["prompt"], raw=True)
        schema = response_schema(self.body.get("response_format"))
        if schema is not None:
            payload["json_schema"] = schema
        return payload


def _refuse_what_cannot_be_honoured(body: dict[str, Any]) -> None:
    for name, (neutral, why) in OPENAI_NEUTRAL.items():
        if name in body and not any(_same(body[name], ok) for ok in neutral):
            raise ValueError(f"body.{name}={json.dumps(body[name])[:40]} is not supported "
                             f"({why}); remove it")
    best_of = body.get("best_of")
    if best_of is not None and best_of != (body.get("n") or 1):
        raise ValueError("body.best_of is not supported (only best_of equal to n); remove it")


def _same(value: Any, neutral: Any) -> bool:
    """Equal and of the same kind: `0` stands for `false`, but `1` is not `true`."""
    if isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral or (neutral == 0 and value is False)
    return bool(value == neutral)


def openai_messages(raw: Any) -> list[dict[str, str]]:
    """OpenAI chat messages as ours: text content parts joined, `developer` read as
    `system`, participant names dropped; images, audio and tool turns refused by name."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("body.messages must be a non-empty list")
    messages = []
    for i, message in enumerate(raw):
        where = f"body.messages.{i}"
        if not isinstance(message, dict):
            raise ValueError(f"{where} must be an object")
        extra = sorted(set(message) - MESSAGE_FIELDS)
        if extra:
            raise ValueError(f"{where}: field(s) not supported: {', '.join(extra)}")
        role = "system" if message.get("role") == "developer" else message.get("role")
        content = message.get("content")
        if isinstance(content, list):
            content = _text_of(content, where)
        try:
            messages.append(Message.model_validate({"role": role, "content": content})
                            .model_dump())
        except ValidationError as exc:
            raise ValueError(f"{where}.{reason(exc)}") from None
    return messages


def _text_of(parts: list[Any], where: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ValueError(f"{where}.content.{j}: only text parts are supported "
                             f"(got {kind or type(part).__name__!s})")
        texts.append(part["text"])
    return "\n".join(texts)


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """`response_format` as the JSON Schema the answer is constrained to (vLLM structured
    outputs), or None for plain text."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise ValueError(f"body.response_format.type {kind!r} is not supported "
                         "(text, json_object, json_schema)")
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise ValueError("body.response_format.json_schema.schema must be a JSON Schema object")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"body.response_format.json_schema.schema is invalid: "
                         f"{exc.message}") from None
    return schema
