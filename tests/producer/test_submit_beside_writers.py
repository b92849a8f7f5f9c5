"""A submit holds no write transaction while it reads its input: on real SQLite a worker
claims a chunk while a submit waits on a slow input, which it writes only once read,
and the job stays out of sight until its last transaction; a submit that stops half way
leaves nothing."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack
from sqlalchemy import func, select

from producer import readers
from producer.status import all_jobs, status
from producer.submit import submit
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Item, Job, JobCount
from worker import leases

PROMPT_S = 5.0


def lines(first: int, n: int) -> str:
    return "".join(json.dumps({"id": f"s{i}", "prompt": "hi"}) + "\n"
                   for i in range(first, first + n))


def count(db_url: str, table: type) -> int:
    with db.reader(db_url) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_submit_writes_nothing_while_it_reads_and_a_worker_claims_meanwhile(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("producer.submit.BATCH", 100)
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    small = tmp_path / "small.jsonl"
    small.write_text(lines(0, 2))
    running = submit(settings, JobSpec(), small)
    slow = tmp_path / "slow.jsonl"
    os.mkfifo(slow)
    box: dict[str, Any] = {}
    submitting = threading.Thread(target=lambda: box.update(
        done=submit(settings, JobSpec(chunk_size=50), slow, fmt="jsonl")), daemon=True)
    submitting.start()
    with slow.open("w") as pipe:
        pipe.write(lines(0, 250))
        pipe.flush()
        time.sleep(0.5)  # the submit reads what the pipe has, then waits for more
        assert count(stack.db_url, Item) == 2, "the submit wrote rows before its input ended"
        started = time.monotonic()
        claimed = threading.Thread(target=lambda: box.update(lease=leases.claim(
            stack.db_url, running.job_id, 0, "w1", 30.0)), daemon=True)
        claimed.start()
        claimed.join(PROMPT_S)
        assert not claimed.is_alive(), "a worker's claim waited on a submit reading its input"
        print(f"claim beside the submit: {(time.monotonic() - started) * 1000:.0f} ms")
        assert box["lease"] is not None
        assert [job["job_id"] for job in all_jobs(stack.db_url)] == [running.job_id]
        pipe.write(lines(250, 50))
    submitting.join(30)
    assert box["done"].items == 300
    shown = status(stack.db_url, box["done"].job_id)
    assert (shown["total"], shown["pending"], shown["state"]) == (300, 300, "queued")


def test_a_submit_stopped_half_way_leaves_no_job_and_no_items(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("producer.submit.BATCH", 10)
    real_read = readers.read

    def interrupted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for n, row in enumerate(real_read(*args, **kwargs)):
            if n == 35:
                raise KeyboardInterrupt  # Ctrl-C with three batches read
            yield row

    monkeypatch.setattr(readers, "read", interrupted)
    path = tmp_path / "in.jsonl"
    path.write_text(lines(0, 50))
    before = [count(stack.db_url, table) for table in (Job, Item, JobCount)]
    with pytest.raises(KeyboardInterrupt):
        submit(load(database_url=stack.db_url, broker_url=stack.broker_url), JobSpec(), path)
    assert [count(stack.db_url, table) for table in (Job, Item, JobCount)] == before
