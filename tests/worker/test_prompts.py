"""From a payload to chat messages and token ids, checked against the context."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.spec import Example, JobSpec
from worker.prompts import (
    PromptTooLong,
    build,
    classify_instruction,
    encode_many,
    item_seed,
    messages_for,
    question,
    sampling_for,
    user_prompt,
)


def test_spec_system_prompt_comes_first() -> None:
    messages = messages_for(JobSpec(system="Be brief."), {"prompt": "Hi"})
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_no_system_prompt_means_no_system_message() -> None:
    assert messages_for(JobSpec(), {"prompt": "Hi"}) == [{"role": "user", "content": "Hi"}]


def test_few_shot_examples_come_in_order_before_the_item() -> None:
    spec = JobSpec(examples=[Example(input="1+1", output="2"), Example(input="2+2", output="4")])
    messages = messages_for(spec, {"prompt": "3+3"})
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "1+1"), ("assistant", "2"), ("user", "2+2"), ("assistant", "4"), ("user", "3+3"),
    ]


def test_classify_appends_the_label_instruction_to_the_system_prompt() -> None:
    spec = JobSpec(kind="classify", labels=["spam", "ham"], system="You sort mail.")
    system = messages_for(spec, {"prompt": "Win!"})[0]
    assert system["role"] == "system"
    assert system["content"] == "You sort mail.\n\n" + classify_instruction(["spam", "ham"])
    assert "spam, ham" in system["content"]


def test_classify_without_system_prompt_sends_only_the_instruction() -> None:
    spec = JobSpec(kind="classify", labels=["spam", "ham"])
    system = messages_for(spec, {"prompt": "Win!"})[0]
    assert system == {"role": "system", "content": classify_instruction(["spam", "ham"])}


def test_a_rows_own_system_message_wins_over_the_spec() -> None:
    own = [{"role": "system", "content": "Row rules."}, {"role": "user", "content": "Hi"}]
    messages = messages_for(JobSpec(system="Spec rules."), {"messages": own})
    assert messages == own


def test_build_renders_the_chat_template_and_its_exact_tokens(tokenizer: Any) -> None:
    prompt = build(tokenizer, JobSpec(system="Be brief."), {"prompt": "Name a colour."}, 2048, 64)
    assert "Be brief." in prompt.text and "Name a colour." in prompt.text
    assert prompt.text.rstrip().endswith("assistant")
    assert prompt.token_ids == tokenizer.encode(prompt.text, add_special_tokens=False)
    assert prompt.max_tokens == 64


def test_build_takes_a_raw_completion_prompt_as_it_is(tokenizer: Any) -> None:
    prompt = build(tokenizer, JobSpec(), {"prompt": "Once upon a time", "raw": True}, 2048, 8)
    assert prompt.text == "Once upon a time"
    assert prompt.token_ids == tokenizer.encode("Once upon a time")


def test_over_long_prompt_raises_naming_both_token_counts(tokenizer: Any) -> None:
    payload = {"prompt": "word " * 300}
    with pytest.raises(PromptTooLong) as info:
        build(tokenizer, JobSpec(), payload, 128, 16)
    n = len(tokenizer.encode(
        tokenizer.apply_chat_template(messages_for(JobSpec(), payload),
                                      add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    ))
    assert f"prompt is {n} tokens" in str(info.value)
    assert "context is 128 tokens" in str(info.value)


def test_prompt_filling_the_whole_context_is_too_long(tokenizer: Any) -> None:
    fits = build(tokenizer, JobSpec(), {"prompt": "Hi"}, 4096, 16)
    with pytest.raises(PromptTooLong):
        build(tokenizer, JobSpec(), {"prompt": "Hi"}, len(fits.token_ids), 16)


def test_max_tokens_is_clamped_to_the_context_left(tokenizer: Any) -> None:
    fits = build(tokenizer, JobSpec(), {"prompt": "Hi"}, 4096, 16)
    room = len(fits.token_ids) + 5
    assert build(tokenizer, JobSpec(), {"prompt": "Hi"}, room, 100).max_tokens == 5


def test_item_seed_is_stable_across_runs() -> None:
    assert item_seed(0, "a") == item_seed(0, "a", attempt=0)
    assert item_seed(42, "row-1", attempt=0) == 711546723


def test_item_seed_differs_per_key_attempt_and_job_seed() -> None:
    seeds = {item_seed(0, "a"), item_seed(0, "b"), item_seed(0, "a", attempt=1), item_seed(1, "a")}
    assert len(seeds) == 4
    assert all(0 <= s < 2**31 for s in seeds)


def test_row_sampling_overrides_the_jobs() -> None:
    spec = JobSpec.model_validate({"sampling": {"temperature": 0.7, "max_tokens": 64}})
    sampling = sampling_for(spec, {"sampling": {"max_tokens": 8}})
    assert (sampling.temperature, sampling.max_tokens) == (0.7, 8)
    assert sampling_for(spec, {"prompt": "x"}) is spec.sampling


def test_prompts_encoded_together_have_the_tokens_each_would_alone(tokenizer: Any) -> None:
    spec = JobSpec(system="Be brief.")
    payloads = [{"prompt": "Name a colour."}, {"prompt": "Once upon a time", "raw": True},
                {"messages": [{"role": "user", "content": "Hi, how are you?"}]},
                {"no prompt": "at all"}]
    encoded = encode_many(tokenizer, spec, payloads)

    assert encoded[3] is None  # the item without a prompt is left to fail on its own
    for payload, item_encoded in zip(payloads[:3], encoded, strict=False):
        together = build(tokenizer, spec, payload, 2048, 64, encoded=item_encoded)
        alone = build(tokenizer, spec, payload, 2048, 64)
        assert together.token_ids == alone.token_ids and together.text == alone.text
    with pytest.raises(KeyError):
        build(tokenizer, spec, payloads[3], 2048, 64, encoded=encoded[3])


DOCUMENT = {"text": "The keeper logged the weather.", "document": "/data/docs/log.md",
            "path": "docs/log.md", "pages": None, "size": 31, "sha256": "ab12"}


def test_a_documents_prompt_is_the_jobs_template_over_its_stored_fields() -> None:
    spec = JobSpec(template="{{ name }} | {{ path }} | {{ document }} | {{ pages }} | "
                            "{{ size }} | {{ sha256 }}\n\n{{ text }}")
    payload = dict(DOCUMENT)
    assert messages_for(spec, payload) == [{"role": "user", "content": (
        "log | docs/log.md | /data/docs/log.md | None | 31 | ab12\n\n"
        "The keeper logged the weather.")}]
    assert question(payload) == messages_for(spec, payload)[0]["content"]


def test_a_document_without_a_template_is_asked_its_text() -> None:
    assert user_prompt(JobSpec(), dict(DOCUMENT)) == "The keeper logged the weather."


def test_a_stored_prompt_is_used_as_it_is() -> None:
    spec = JobSpec(template="Summarize: {{ text }}")
    assert user_prompt(spec, {**DOCUMENT, "prompt": "As submitted"}) == "As submitted"


def test_a_template_a_document_cannot_render_fails_with_the_reason() -> None:
    with pytest.raises(ValueError, match="'title' is undefined"):
        user_prompt(JobSpec(template="{{ title }}"), dict(DOCUMENT))
