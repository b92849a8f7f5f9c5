"""Leases decide who runs a chunk: one holder at a time, free again once expired."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import Stack

from producer.submit import submit
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus
from worker import leases


def _job(stack: Stack, tmp_path: Path) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    return submit(settings, JobSpec(chunk_size=2), path).job_id


def test_a_leased_chunk_cannot_be_taken_twice(stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    assert leases.claim(stack.db_url, job, 0, "w1", ttl=60)
    assert not leases.claim(stack.db_url, job, 0, "w2", ttl=60)
    with db.session(stack.db_url) as s:
        chunk = s.get_one(Chunk, (job, 0))
        assert (chunk.status, chunk.lease_owner, chunk.deliveries) == (ChunkStatus.LEASED, "w1", 1)
        assert s.get_one(Item, (job, 0)).status == ItemStatus.RUNNING


def test_an_expired_lease_can_be_taken_by_another_worker(stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    assert leases.claim(stack.db_url, job, 1, "dead-worker", ttl=-1)
    assert leases.claim(stack.db_url, job, 1, "w2", ttl=60)
    with db.session(stack.db_url) as s:
        assert s.get_one(Chunk, (job, 1)).lease_owner == "w2"
        assert s.get_one(Chunk, (job, 1)).deliveries == 2


def test_heartbeat_keeps_a_lease_alive_and_release_hands_it_back(stack: Stack,
                                                                 tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    assert leases.claim(stack.db_url, job, 0, "w1", ttl=-1)
    beat = leases.Heartbeat(stack.db_url, "w1", ttl=60)
    try:
        beat.hold(job, 0)
        beat.renew()
        assert not leases.claim(stack.db_url, job, 0, "w2", ttl=60)
    finally:
        beat.stop()
    leases.release(stack.db_url, job, 0, "w1")
    with db.session(stack.db_url) as s:
        assert s.get_one(Chunk, (job, 0)).status == ChunkStatus.PENDING
        assert s.get_one(Item, (job, 0)).status == ItemStatus.PENDING
    assert leases.claim(stack.db_url, job, 0, "w2", ttl=60)


def test_a_message_for_a_job_this_database_lacks_is_dropped_with_a_warning(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.leases"):
        assert not leases.claim(stack.db_url, "f" * 32, 0, "w1", ttl=60)
    assert "share this Redis database" in caplog.text
