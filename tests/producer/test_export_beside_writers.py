"""A long export on real SQLite, held open by a reader that stops reading (`nightshift
results JOB | less`), beside a running job: the worker's claims, heartbeats and result
writes keep landing while the export waits on its pipe, its transaction open."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import NIGHTSHIFT, Stack
from sqlalchemy import insert

from producer.status import status
from producer.submit import submit
from schemas import db
from schemas.db import bulk
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Item, ItemStatus, Job, JobState, Result
from worker import chunks, leases
from worker.attempts import Outcome

EXPORTED = 200_000
READ_FIRST = 1_000
# A write that waits on the export's transaction waits SQLite's busy timeout (60 s).
PROMPT_S = 5.0


def big_finished_job(db_url: str, rows: int) -> str:
    """A completed job of `rows` items with their results, written in bulk."""
    job_id = uuid.uuid4().hex
    with db.session(db_url) as session, session.begin():
        session.execute(insert(Job), [{"id": job_id, "kind": "generate", "model": "m", "spec": {},
                                       "state": JobState.COMPLETED, "total": rows}])
        conn = session.connection()
        bulk.insert_rows(conn, Item.__table__, ("job_id", "seq", "key", "chunk", "payload",
                                              "status", "deaths"),
                       [(job_id, i, f"r{i}", i // 1000, '{"prompt": "Say hi."}',
                         ItemStatus.SUCCEEDED, 0) for i in range(rows)])
        bulk.insert_rows(conn, Result.__table__, ("job_id", "item_seq", "status", "output",
                                                "prompt_tokens", "completion_tokens",
                                                "attempts", "created_at"),
                       [(job_id, i, ItemStatus.SUCCEEDED, f"Hi number {i}.", 5, 4, 1,
                         "2026-01-01 00:00:00") for i in range(rows)])
    return job_id


def promptly(what: str, work: Callable[[], Any]) -> Any:
    """`work`'s value, failing if it takes longer than PROMPT_S (the thread is left to end
    once the reader lets go)."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(value=work()), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(PROMPT_S)
    assert not thread.is_alive(), f"{what} waited more than {PROMPT_S} s on the export"
    assert "value" in box, f"{what} failed (see the thread's traceback above)"
    print(f"{what}: {(time.monotonic() - started) * 1000:.0f} ms")
    return box["value"]


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_paused_export_of_200000_rows_lets_a_running_jobs_writes_land(
        stack: Stack, tmp_path: Path) -> None:
    exported = big_finished_job(stack.db_url, EXPORTED)
    lines = tmp_path / "running.jsonl"
    lines.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "hi"}) + "\n"
                             for i in range(30)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    running = submit(settings, JobSpec(chunk_size=10), lines)
    heartbeat = leases.Heartbeat(stack.db_url, "w1", ttl=30.0)
    reader = subprocess.Popen([NIGHTSHIFT, "results", exported, "--format", "jsonl"],
                              env=stack.env(), stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        read = [json.loads(reader.stdout.readline())["id"] for _ in range(READ_FIRST)]
        assert read[-1] == f"r{READ_FIRST - 1}"  # then the reader pauses: the pipe fills
        for seq in range(3):
            lease = promptly(f"claim {seq}", lambda seq=seq: leases.claim(
                stack.db_url, running.job_id, seq, "w1", 30.0))
            assert lease is not None
            heartbeat.hold(lease)
            assert promptly(f"heartbeat {seq}", heartbeat.renew) == []
            outcomes = [Outcome(i, ItemStatus.SUCCEEDED, output="hello",
                                prompt_tokens=3, completion_tokens=1)
                        for i in range(seq * 10, seq * 10 + 10)]
            promptly(f"write {seq}", lambda lease=lease, o=outcomes: chunks.write(
                stack.db_url, lease, o))
            heartbeat.drop(lease)
        assert status(stack.db_url, running.job_id)["state"] == JobState.COMPLETED
        assert reader.poll() is None, "the export ended before the writes: nothing was held"
    finally:
        heartbeat.stop()
        reader.kill()
        reader.wait(60)
