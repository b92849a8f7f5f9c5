"""Cancel ends a job for good: nothing stays pending or running once no live worker
holds its chunks, and a job that already ended is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from conftest import Stack, lease
from sqlalchemy import select

from producer.cli import cli
from producer.status import cancel
from producer.submit import submit
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Chunk, ChunkStatus, Item, JobState
from worker import leases
from worker.chunks import write
from worker.generate import Outcome
from worker.reconcile import reconcile


def _job(stack: Stack, tmp_path: Path, n: int = 6) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(n)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    return submit(settings, JobSpec(chunk_size=2), path).job_id


def _open_items(stack: Stack, job: str) -> dict[int, str]:
    with db.session(stack.db_url) as session:
        return dict(session.execute(select(Item.seq, Item.status).where(
            Item.job_id == job, Item.status.in_(("pending", "running")))).all())


def test_a_cancelled_job_ends_the_chunks_of_a_dead_worker_and_a_handed_back_one(
        stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    dead = leases.claim(stack.db_url, job, 0, "dead", ttl=-1)  # its worker is gone
    handed = lease(stack.db_url, job, 1, "w2")
    live = lease(stack.db_url, job, 2, "w3")
    stopped, shown = cancel(stack.db_url, job)
    assert stopped and shown["state"] == JobState.CANCELLED and dead is not None
    assert set(_open_items(stack, job)) == {2, 3, 4, 5}  # chunks 1 and 2 are still held

    leases.release(stack.db_url, handed)  # shutting down: handed back, pending again
    done = reconcile(stack.db_url, stack.broker_url)
    assert done.abandoned == 1
    assert set(_open_items(stack, job)) == {4, 5}  # only the live worker's chunk runs on

    write(stack.db_url, live, [Outcome(4, "succeeded", output="a"),
                               Outcome(5, "succeeded", output="b")])
    assert _open_items(stack, job) == {}
    with db.session(stack.db_url) as session:
        assert set(session.scalars(select(Chunk.status).where(Chunk.job_id == job))) == {
            ChunkStatus.DONE}
    shown = CliRunner().invoke(cli, ["status", job, "--json", "--database-url", stack.db_url])
    counts = json.loads(shown.stdout)
    assert (counts["state"], counts["cancelled"], counts["succeeded"]) == ("cancelled", 4, 2)


def test_cancel_leaves_a_completed_job_completed_and_says_so(stack: Stack,
                                                               tmp_path: Path) -> None:
    job = _job(stack, tmp_path, n=2)
    write(stack.db_url, lease(stack.db_url, job, 0),
          [Outcome(0, "succeeded", output="a"), Outcome(1, "succeeded", output="b")])
    result = CliRunner().invoke(cli, ["cancel", job, "--json", "--database-url", stack.db_url])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["state"] == "completed"
    assert "had already ended (completed)" in result.stderr
