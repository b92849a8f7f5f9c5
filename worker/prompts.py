"""From an item's payload to the exact tokens the engine sees, checked against the context.

Length is checked here, per item, because one over-long prompt handed to vLLM fails
every request in the same call; here it fails alone, with a reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from schemas.render import render as render_template
from schemas.spec import JobSpec, Sampling

DOCUMENT_TEMPLATE = "{{ text }}"


class PromptTooLong(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    text: str
    token_ids: list[int]
    max_tokens: int


def classify_instruction(labels: list[str]) -> str:
    return "Answer with exactly one of these labels: " + ", ".join(labels) + "."


def document_fields(payload: dict[str, Any], *, text: str | None = None) -> dict[str, Any]:
    """What a document's template sees: its payload's fields, `name` (the file's stem), and
    its text or, for a piece of a long one, that piece."""
    fields = {k: v for k, v in payload.items() if k != "prompt"}
    fields["name"] = PurePath(str(payload["document"])).stem
    if text is not None:
        fields["text"] = text
    return fields


def user_prompt(spec: JobSpec, payload: dict[str, Any]) -> str:
    """The item's own prompt. A document's payload holds its text once and no prompt: the
    job's template is rendered over its fields here, once, and kept on the payload in memory
    (retries, checks and `question` read it again); the stored payload is not changed."""
    if "prompt" not in payload and "document" in payload and "text" in payload:
        payload["prompt"] = render_template(spec.template or DOCUMENT_TEMPLATE,
                                            document_fields(payload))
    return str(payload["prompt"])


def messages_for(spec: JobSpec, payload: dict[str, Any]) -> list[dict[str, str]]:
    """System prompt, few-shot turns, then the item's own turns."""
    own: list[dict[str, str]] = payload.get("messages") or [
        {"role": "user", "content": user_prompt(spec, payload)}
    ]
    system = [m["content"] for m in own if m["role"] == "system"] or [spec.system or ""]
    if spec.kind == "classify":
        system = [(system[0] + "\n\n" + classify_instruction(spec.labels)).strip()]
    head = [{"role": "system", "content": system[0]}] if system[0] else []
    shots: list[dict[str, str]] = []
    for example in spec.examples:
        shots += [
            {"role": "user", "content": example.input},
            {"role": "assistant", "content": example.output},
        ]
    return head + shots + [m for m in own if m["role"] != "system"]


# A prompt's text and its token ids.
Encoded = tuple[str, list[int]]


def render(tokenizer: Any, spec: JobSpec, payload: dict[str, Any]) -> tuple[str, bool]:
    """The prompt's text through the model's chat template (or a raw completion prompt as
    it is), and whether the tokenizer adds its special tokens to it (raw only)."""
    if "prompt" in payload and payload.get("raw"):
        return payload["prompt"], True
    return _template(tokenizer, messages_for(spec, payload)), False


def build(tokenizer: Any, spec: JobSpec, payload: dict[str, Any], max_model_len: int,
          max_tokens: int, *, encoded: Encoded | None = None) -> Prompt:
    """The item's prompt, checked against the context; `encoded` is its text and tokens
    from encode_many, where the chunk has them."""
    if encoded is None:
        text, special = render(tokenizer, spec, payload)
        encoded = text, tokenizer.encode(text, add_special_tokens=special)
    return checked(*encoded, max_model_len, max_tokens)


def chat(tokenizer: Any, messages: list[dict[str, str]], max_model_len: int,
         max_tokens: int) -> Prompt:
    text = _template(tokenizer, messages)
    return checked(text, tokenizer.encode(text, add_special_tokens=False), max_model_len,
                   max_tokens)


def encode_many(tokenizer: Any, spec: JobSpec, payloads: list[dict[str, Any]]
                ) -> list[Encoded | None]:
    """Many items' prompts, rendered one by one and tokenized in one call per kind (chat or
    raw); None for an item that does not render (build() raises it again, for that item).

    The tokenizer gives up the GIL while it encodes, and a worker thread that encodes item
    by item waits for the engine's stepping thread to hand it back, once per item, up to
    a switch interval (5 ms), which costs far more than the encoding itself
    (bench/README.md, "Figures behind defaults")."""
    rendered: list[tuple[str, bool] | None] = []
    for payload in payloads:
        try:
            rendered.append(render(tokenizer, spec, payload))
        except Exception:  # noqa: BLE001 - build() raises it again, failing that item alone
            rendered.append(None)
    encoded: list[Encoded | None] = [None] * len(payloads)
    for special in (True, False):
        picked = [(i, r[0]) for i, r in enumerate(rendered) if r is not None and r[1] == special]
        if picked:
            ids = tokenizer([text for _, text in picked], add_special_tokens=special)
            for (i, text), token_ids in zip(picked, ids["input_ids"], strict=True):
                encoded[i] = text, token_ids
    return encoded


def _template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False))


def checked(text: str, ids: list[int], max_model_len: int, max_tokens: int) -> Prompt:
    if len(ids) >= max_model_len:
        raise PromptTooLong(
            f"prompt is {len(ids)} tokens; the model's context is {max_model_len} tokens "
            "(shorten the input or start the worker with a larger --max-model-len)"
        )
    return Prompt(text, ids, min(max_tokens, max_model_len - len(ids)))


def question(payload: dict[str, Any]) -> str:
    """The item's own request, without system prompt or examples: what its answer is
    measured against (a document's once its prompt was built: see user_prompt)."""
    if "prompt" in payload:
        return str(payload["prompt"])
    users = [m["content"] for m in payload.get("messages", []) if m["role"] == "user"]
    return users[-1] if users else ""


def item_seed(job_seed: int, key: str, *, attempt: int = 0) -> int:
    """A seed stable across runs and machines: the same job seed and id sample the same."""
    digest = hashlib.blake2b(f"{job_seed}:{key}:{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def sampling_for(spec: JobSpec, payload: dict[str, Any]) -> Sampling:
    """The job's sampling with the row's own overrides (OpenAI batch bodies carry them)."""
    overrides = payload.get("sampling") or {}
    if not overrides:
        return spec.sampling
    return Sampling.model_validate({**spec.sampling.model_dump(), **overrides})
