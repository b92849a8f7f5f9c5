"""Leases decide who runs a chunk: one holder at a time, free again once expired."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
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
    assert leases.claim(stack.db_url, job, 0, "w1", ttl=60) == leases.Lease(job, 0, "w1", 1)
    assert leases.claim(stack.db_url, job, 0, "w2", ttl=60) is None
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
    held = leases.claim(stack.db_url, job, 0, "w1", ttl=-1)
    assert held is not None
    beat = leases.Heartbeat(stack.db_url, "w1", ttl=60)
    try:
        beat.hold(held)
        assert beat.renew() == []
        assert not leases.claim(stack.db_url, job, 0, "w2", ttl=60)
    finally:
        beat.stop()
    assert leases.release(stack.db_url, held)
    with db.session(stack.db_url) as s:
        assert s.get_one(Chunk, (job, 0)).status == ChunkStatus.PENDING
        assert s.get_one(Item, (job, 0)).status == ItemStatus.PENDING
    assert leases.claim(stack.db_url, job, 0, "w2", ttl=60)


def test_a_message_for_a_job_this_database_lacks_is_dropped_with_a_warning(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.leases"):
        assert leases.claim(stack.db_url, "f" * 32, 0, "w1", ttl=60) is None
    assert "share this Redis database" in caplog.text


def test_a_renewal_that_finds_its_lease_taken_reports_it_and_stops_renewing_it(
        stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    stale = leases.claim(stack.db_url, job, 0, "w1", ttl=-1)  # paused past its lease
    assert stale is not None
    assert leases.claim(stack.db_url, job, 0, "w2", ttl=60) is not None
    lost: list[leases.Lease] = []
    beat = leases.Heartbeat(stack.db_url, "w1", ttl=60, on_lost=lost.append)
    try:
        beat.hold(stale)
        assert beat.renew() == [stale] and lost == [stale]
        assert beat.held == set() and beat.renew() == []
    finally:
        beat.stop()
    assert not leases.release(stack.db_url, stale)  # nothing of w2's is handed back
    with db.session(stack.db_url) as s:
        assert s.get_one(Chunk, (job, 0)).lease_owner == "w2"


def test_a_worker_whose_engine_makes_no_progress_lets_its_leases_run_out(
        stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    held = leases.claim(stack.db_url, job, 0, "w1", ttl=-1)
    assert held is not None
    beat = leases.Heartbeat(stack.db_url, "w1", ttl=60, healthy=lambda: False)
    try:
        beat.hold(held)
        beat.renew()
    finally:
        beat.stop()
    assert leases.claim(stack.db_url, job, 0, "w2", ttl=60) is not None


def test_a_lease_runs_from_the_database_clock_for_its_length_in_utc(
        stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    with db.session(stack.db_url) as s:
        before = db.clock(s)
    assert leases.claim(stack.db_url, job, 0, "w1", ttl=60) is not None
    with db.session(stack.db_url) as s:
        expires = s.get_one(Chunk, (job, 0)).lease_expires_at
        after = db.clock(s)
    assert expires is not None
    assert before + timedelta(seconds=59) < expires < after + timedelta(seconds=61)
