"""Overnight scheduling: a job held until its start time, cancelled at its deadline, and
higher priorities served first; reconcile does the work that falls due."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from conftest import Stack
from sqlalchemy import select

from producer.cli import cli
from producer.schedule import Schedule, parse, when
from producer.status import status
from producer.submit import submit
from schemas import db
from schemas.errors import ConfigError
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Item, ItemStatus, Job, JobState
from worker import leases
from worker.app import app_for
from worker.broker import queue_depth, queue_for
from worker.chunks import write
from worker.generate import Outcome
from worker.reconcile import reconcile

MODEL = JobSpec().model


def _jsonl(tmp_path: Path, n: int, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": f"i{k}", "prompt": f"p{k}"}) + "\n"
                            for k in range(n)))
    return path


def _messages(stack: Stack, job_id: str) -> int:
    """Chunk messages waiting for this job, over every priority list of the model's queue
    (the PostgreSQL database is shared by the session: other tests' jobs may be there)."""
    client = redis.Redis.from_url(stack.broker_url)
    keys = client.keys(queue_for(MODEL) + "*")
    return sum(job_id in json.loads(m)["headers"]["argsrepr"]
               for key in keys for m in client.lrange(key, 0, -1))


def _statuses(stack: Stack, job_id: str) -> dict[int, str]:
    with db.session(stack.db_url) as session:
        statuses = select(Item.seq, Item.status).where(Item.job_id == job_id)
        return dict(session.execute(statuses).all())


def test_a_job_starting_later_is_not_enqueued_until_reconcile_finds_it_due(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DATABASE_URL", stack.db_url)
    monkeypatch.setenv("NIGHTSHIFT_BROKER_URL", stack.broker_url)
    start = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    out = CliRunner().invoke(cli, ["submit", str(_jsonl(tmp_path, 5)), "--chunk-size", "2",
                                   "--start-at", start.isoformat(), "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    job_id = json.loads(out.stdout)["job_id"]

    shown = status(stack.db_url, job_id)
    assert shown["state"] == JobState.SCHEDULED
    assert datetime.fromisoformat(shown["start_at"]) == start
    assert shown["reason"].startswith("starts at")
    assert queue_depth(stack.broker_url, MODEL) == 0

    assert job_id not in reconcile(stack.db_url, stack.broker_url).started  # still early
    assert _messages(stack, job_id) == 0
    assert status(stack.db_url, job_id)["state"] == JobState.SCHEDULED

    done = reconcile(stack.db_url, stack.broker_url, now=start + timedelta(seconds=1))
    assert job_id in done.started
    assert status(stack.db_url, job_id)["state"] == JobState.QUEUED
    assert _messages(stack, job_id) == 3

    again = reconcile(stack.db_url, stack.broker_url, now=start + timedelta(seconds=2))
    assert job_id not in again.started and _messages(stack, job_id) == 3


def test_the_deadline_cancels_pending_items_and_running_chunks_finish(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    deadline = datetime.now(UTC) + timedelta(hours=1)
    job = submit(settings, JobSpec(chunk_size=2), _jsonl(tmp_path, 5),
                 schedule=Schedule(deadline=deadline)).job_id
    running = leases.claim(stack.db_url, job, 0, "w1", 60)  # chunk 0 is running
    assert running is not None and running.deliveries == 1

    early = reconcile(stack.db_url, stack.broker_url, now=deadline - timedelta(seconds=1))
    assert job not in early.expired
    done = reconcile(stack.db_url, stack.broker_url, now=deadline + timedelta(seconds=1))

    assert job in done.expired
    assert _statuses(stack, job) == {0: "running", 1: "running", 2: "cancelled",
                                     3: "cancelled", 4: "cancelled"}
    shown = status(stack.db_url, job)
    assert shown["state"] == JobState.CANCELLED
    assert "deadline" in shown["reason"] and "passed" in shown["reason"]

    write(stack.db_url, running, [Outcome(0, ItemStatus.SUCCEEDED, output="a"),
                                  Outcome(1, ItemStatus.SUCCEEDED, output="b")])
    shown = status(stack.db_url, job)
    assert (shown["succeeded"], shown["cancelled"], shown["state"]) == (2, 3, "cancelled")


def test_a_scheduled_job_past_its_deadline_is_cancelled_without_ever_starting(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    start = datetime.now(UTC) + timedelta(hours=1)
    job = submit(settings, JobSpec(), _jsonl(tmp_path, 3),
                 schedule=Schedule(start, start + timedelta(hours=1))).job_id

    done = reconcile(stack.db_url, stack.broker_url, now=start + timedelta(hours=2))

    assert job in done.expired and job not in done.started
    assert set(_statuses(stack, job).values()) == {ItemStatus.CANCELLED}
    assert _messages(stack, job) == 0


def test_a_higher_priority_job_submitted_later_is_consumed_first(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    big = submit(settings, JobSpec(chunk_size=1), _jsonl(tmp_path, 6, "big.jsonl")).job_id
    urgent = submit(settings, JobSpec(chunk_size=1), _jsonl(tmp_path, 2, "urgent.jsonl"),
                    schedule=Schedule(priority=5)).job_id
    with db.session(stack.db_url) as session:
        assert session.get_one(Job, urgent).priority == 5

    order = []
    with app_for(stack.broker_url).connection_for_read() as conn:  # the workers' settings
        queue = conn.SimpleQueue(queue_for(MODEL))
        for _ in range(8):
            message = queue.get(timeout=1)
            order.append(message.headers["argsrepr"].split("'")[1])
            message.ack()
    assert order == [urgent] * 2 + [big] * 6


def test_clock_times_are_the_next_such_local_time_and_deadlines_follow_the_start() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    local = now.astimezone()
    start = when("22:00", now, "--start-at").astimezone()
    assert (start.hour, start.minute) == (22, 0) and now < start <= now + timedelta(days=1)
    earlier = when(f"{(local.hour - 1) % 24:02d}:00", now, "--start-at")
    assert now + timedelta(hours=22) < earlier <= now + timedelta(hours=23)

    night = parse("22:00", "07:00", priority=3, now=now)
    assert night.deadline is not None and night.start_at is not None
    assert night.deadline - night.start_at == timedelta(hours=9)
    assert night.priority == 3 and night.waits(now) and not night.waits(night.start_at)

    iso = parse("2026-11-28T01:30:00+00:00", None, now=now)
    assert iso.start_at == datetime(2026, 11, 28, 1, 30, tzinfo=UTC)


def test_bad_times_and_deadlines_before_the_start_are_refused_naming_the_option() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    with pytest.raises(ConfigError, match="--start-at 'tonight': not HH:MM"):
        parse("tonight", None, now=now)
    with pytest.raises(ConfigError, match="--deadline 2026-11-27T10:00:00\\+00:00: must be after"):
        parse(None, "2026-11-27T10:00:00+00:00", now=now)
    with pytest.raises(ConfigError, match="--priority 12"):
        parse(None, None, priority=12, now=now)
