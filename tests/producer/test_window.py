"""Jobs take turns: each keeps a window of chunk messages on the broker and sends its next
chunk as one finishes, so a small job submitted behind a big one waits for a window's
worth of the big one's chunks, not for all of them. Real Redis, real SQL."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import redis
from conftest import Stack, lease

from producer.submit import submit
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Job
from worker.attempts import Outcome
from worker.broker import queue_for
from worker.chunks import write
from worker.reconcile import reconcile


def _jsonl(tmp_path: Path, name: str, n: int) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": f"{name}{i}", "prompt": f"p{i}"}) + "\n"
                            for i in range(n)))
    return path


def _next_up(stack: Stack) -> list[tuple[str, int]]:
    """The queue's messages in the order a worker takes them (kombu pushes left, pops
    right), as (job id, chunk seq)."""
    client = redis.Redis.from_url(stack.broker_url)
    order = []
    for key in sorted(client.keys(queue_for(JobSpec().model) + "*")):
        for raw in reversed(client.lrange(key, 0, -1)):
            job_id, seq = ast.literal_eval(json.loads(raw)["headers"]["argsrepr"])
            order.append((job_id, seq))
    return order


def test_a_small_job_behind_a_big_one_waits_for_a_window_not_for_all_of_it(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url, window=3)
    big = submit(settings, JobSpec(chunk_size=2), _jsonl(tmp_path, "big", 20)).job_id
    small = submit(settings, JobSpec(chunk_size=2), _jsonl(tmp_path, "small", 4)).job_id
    assert _next_up(stack) == [(big, 0), (big, 1), (big, 2), (small, 0), (small, 1)]

    # The big job's first chunk finishes: its next chunk queues behind the small job.
    write(stack.db_url, lease(stack.db_url, big, 0, "w"),
          [Outcome(i, "succeeded", output="x") for i in (0, 1)], broker_url=stack.broker_url)
    assert _next_up(stack)[-3:] == [(small, 0), (small, 1), (big, 3)]
    with db.session(stack.db_url) as session:
        assert session.get_one(Job, big).enqueued == 4 and session.get_one(Job, small).enqueued == 2


def test_reconcile_resends_only_chunks_that_were_sent(stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url, window=2)
    job = submit(settings, JobSpec(chunk_size=1), _jsonl(tmp_path, "job", 5)).job_id
    redis.Redis.from_url(stack.broker_url).flushdb()  # the broker lost its messages

    reconcile(stack.db_url, stack.broker_url, window=2)
    mine = sorted(m for m in _next_up(stack) if m[0] == job)
    assert mine == [(job, 0), (job, 1)]  # chunks 2-4 wait their turn
