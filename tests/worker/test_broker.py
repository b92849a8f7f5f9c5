"""The broker contract: a queue per model, how deep it is, and what an unreachable broker
says."""

from __future__ import annotations

import pytest
from conftest import Stack

from schemas.errors import BrokerUnreachable
from schemas.spec import JobSpec
from worker import broker

MODEL = JobSpec().model


def test_queues_are_per_model_and_safe_names() -> None:
    assert broker.queue_for("smollm2-135m-instruct") == "nightshift.smollm2-135m-instruct"
    assert broker.queue_for("/models/llama 3") == "nightshift.models_llama_3"


def test_queue_depth_counts_every_priority_and_a_queue_never_declared_is_empty(
        stack: Stack) -> None:
    assert broker.queue_depth(stack.broker_url, "a-model-no-one-serves") == 0
    broker.enqueue(stack.broker_url, MODEL, "job", range(2), priority=9)
    broker.enqueue(stack.broker_url, MODEL, "job", range(2, 5), priority=0)
    assert broker.queue_depth(stack.broker_url, MODEL) == 5


def test_queue_depth_of_an_unreachable_broker_is_an_error_naming_it_not_zero() -> None:
    with pytest.raises(BrokerUnreachable, match=r"redis://:\*\*\*@127.0.0.1:1/0") as caught:
        broker.queue_depth("redis://:s3cret@127.0.0.1:1/0", MODEL)
    assert "s3cret" not in str(caught.value)
