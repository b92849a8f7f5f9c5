"""Input rows: what one line of an input file may say, and the payload it becomes.

One bad row is one error with its line number; the models here decide what "bad"
means. Only the fields a format names are accepted, so a misspelt field is
reported instead of silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
# Body fields that change nothing about generation here and are accepted as they are.
OPENAI_IGNORED = {"model", "user", "metadata", "store", "stream", "service_tier"}
OPENAI_URLS = ("/v1/chat/completions", "/v1/completions")


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
        allowed = {text_field} | OPENAI_IGNORED | set(OPENAI_SAMPLING)
        unsupported = sorted(set(self.body) - allowed)
        if unsupported:
            raise ValueError(f"body field(s) not supported: {', '.join(unsupported)}")
        if text_field == "messages":
            for message in self.body["messages"]:
                Message.model_validate(message)
        elif not isinstance(self.body["prompt"], str):
            raise ValueError("body.prompt must be one string")
        Sampling.model_validate(self.sampling())
        return self

    def sampling(self) -> dict[str, Any]:
        return {ours: self.body[theirs] for theirs, ours in OPENAI_SAMPLING.items()
                if theirs in self.body and self.body[theirs] is not None}

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"url": self.url, "sampling": self.sampling()}
        if self.url == "/v1/chat/completions":
            payload["messages"] = self.body["messages"]
        else:
            payload.update(prompt=self.body["prompt"], raw=True)
        return payload


def reason(exc: ValidationError | ValueError) -> str:
    """A validation failure as one line a person can act on."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"
