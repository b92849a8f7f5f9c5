"""Per-job LoRA adapters at submit: a local adapter must exist and hold adapter_config.json
(checked once, at submit, and stored absolute), and its job rides its base model's queue.
The engine side is proven by tests/e2e/test_lora.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from conftest import Stack
from standin_engine import StandInEngine, StandInLLM

from producer.cli import build_spec
from producer.submit import submit
from schemas import db
from schemas.errors import ConfigError
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Job
from worker.broker import queue_for
from worker.engine import EngineHost, lora_id


def _adapter(root: Path) -> Path:
    """The part of a peft adapter directory that submit looks at."""
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"]}))
    return root


def test_submit_stores_a_local_adapter_as_an_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _adapter(tmp_path / "adapters" / "tone")
    monkeypatch.chdir(tmp_path)

    spec = build_spec(None, {}, lora="adapters/tone")

    assert spec.lora == str(tmp_path / "adapters" / "tone")


@pytest.mark.parametrize(("given", "problem"), [
    ("missing/adapter/dir", "no such directory"),
    ("./nowhere", "no such directory"),
    ("plain", "no adapter_config.json in it"),
])
def test_submit_names_what_is_wrong_with_the_adapter_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, problem: str) -> None:
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as caught:
        build_spec(None, {}, lora=given)

    message = str(caught.value)
    assert f"LoRA adapter {given}: {problem}" in message and "\n" not in message


def test_a_hugging_face_repo_id_is_left_for_the_workers_to_fetch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert build_spec(None, {}, lora="someone/smollm2-lora").lora == "someone/smollm2-lora"


def test_a_stored_spec_is_not_checked_against_the_workers_file_system() -> None:
    """A worker on another machine loads the stored spec; only its engine may refuse."""
    stored = JobSpec(lora="/elsewhere/adapter").model_dump(mode="json")
    assert JobSpec.model_validate(stored).lora == "/elsewhere/adapter"


def test_a_lora_job_rides_its_base_models_queue_and_keeps_its_adapter(
        stack: Stack, tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "tone")
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"p{i}"}) + "\n"
                            for i in range(3)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    spec = build_spec(None, {}, lora=str(adapter), chunk_size=2)

    done = submit(settings, spec, path)

    client = redis.Redis.from_url(stack.broker_url)
    queues = {key.decode().split("\x06")[0] for key in client.keys("nightshift.*")}
    assert queues == {queue_for(spec.model)}
    assert sum(client.llen(key) for key in client.keys("nightshift.*")) == done.chunks == 2
    with db.session(stack.db_url) as session:
        assert session.get_one(Job, done.job_id).spec["lora"] == str(adapter)


def test_a_worker_without_enable_lora_fails_the_request_naming_the_option() -> None:
    """The refusal is the request's (its item fails), never the worker's."""
    engine = StandInEngine()
    host = EngineHost(StandInLLM(engine))
    try:
        future = host.submit("r1", [1, 2, 3], SimpleNamespace(), lora="/adapters/tone")

        assert isinstance(future.exception(timeout=1), ValueError)
        assert "restart it with --enable-lora" in str(future.exception())
        assert host.submit("r2", [1], SimpleNamespace()).result(timeout=5).finished
        assert engine.added == ["r2"]
    finally:
        host.stop()


def test_an_adapter_has_the_same_positive_id_in_every_worker() -> None:
    ids = {lora_id("/adapters/tone") for _ in range(3)}
    assert len(ids) == 1 and 0 < ids.pop() < 2**31
    assert lora_id("/adapters/tone") != lora_id("/adapters/other")
