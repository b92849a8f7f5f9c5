"""`nightshift retry` reopens a job that has ended: the items chosen run again in the same
job, their chunks pending and sent once more, with a fresh budget or a new bar; their
earlier attempts stay in the ledger, and everything else stays as it was."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Invoke, Stack, lease
from sqlalchemy import select, update

from producer.retry import retry
from producer.status import cancel, status
from producer.submit import submit
from quality.retries import Step
from schemas import db
from schemas.errors import ConfigError, NotRetryable
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Attempt, Batch, Chunk, ChunkStatus, Item, Job, JobState
from worker import broker
from worker.attempts import Outcome, Try
from worker.chunks import write


def _job(stack: Stack, tmp_path: Path, n: int = 6, **spec: object) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(n)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    return submit(settings, JobSpec(chunk_size=2, **spec), path).job_id  # type: ignore[arg-type]


def _failed(seq: int, attempts: int) -> Outcome:
    tries = [Try(n, Step.FIRST if n == 1 else Step.RESAMPLE, "p", {"seed": n}, 3,
                 output="no", completion_tokens=2) for n in range(1, attempts + 1)]
    return Outcome(seq, "failed", output="no", error="length: too short", quality="failed",
                   attempts=attempts, attempt=attempts, tries=tries)


def _ran(stack: Stack, job: str) -> None:
    """Chunk 0: two answers passed; chunk 1: one failed after three attempts, one kept for
    review; chunk 2: two passed."""
    write(stack.db_url, lease(stack.db_url, job, 0),
          [Outcome(0, "succeeded", output="a", quality="passed"),
           Outcome(1, "succeeded", output="b", quality="passed")])
    write(stack.db_url, lease(stack.db_url, job, 1),
          [_failed(2, 3), Outcome(3, "succeeded", label="x", quality="needs_review")])
    write(stack.db_url, lease(stack.db_url, job, 2),
          [Outcome(4, "succeeded", output="e", quality="passed"),
           Outcome(5, "succeeded", output="f", quality="passed")])


def _items(stack: Stack, job: str) -> dict[int, tuple[str, int]]:
    with db.session(stack.db_url) as session:
        return {seq: (s, a) for seq, s, a in session.execute(
            select(Item.seq, Item.status, Item.attempted).where(Item.job_id == job))}


def _chunks(stack: Stack, job: str) -> dict[int, tuple[str, int]]:
    with db.session(stack.db_url) as session:
        return {seq: (s, d) for seq, s, d in session.execute(
            select(Chunk.seq, Chunk.status, Chunk.deliveries).where(Chunk.job_id == job))}


def _sent(stack: Stack, model: str) -> int:
    return broker.queue_depth(stack.broker_url, model)


def test_retry_failed_runs_only_the_failed_items_and_numbers_after_their_attempts(
        stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    _ran(stack, job)
    assert status(stack.db_url, job)["state"] == JobState.COMPLETED
    model = JobSpec().model
    queued = _sent(stack, model)

    done = retry(stack.db_url, stack.broker_url, job, failed=True)

    assert (done.items, done.chunks, done.state) == (1, 1, JobState.QUEUED)
    items = _items(stack, job)
    assert items[2] == ("pending", 3)  # its three attempts came before
    assert {s for seq, (s, _) in items.items() if seq != 2} == {"succeeded"}
    chunks = _chunks(stack, job)
    assert chunks[1] == (ChunkStatus.PENDING, 0)  # a fresh count of deliveries
    assert {s for seq, (s, _) in chunks.items() if seq != 1} == {ChunkStatus.DONE}
    assert _sent(stack, model) == queued + 1
    shown = status(stack.db_url, job)
    assert (shown["state"], shown["pending"], shown["succeeded"], shown["failed"]) == (
        "queued", 1, 5, 0)

    # The worker's run: its attempt is the fourth, and the first three stay.
    again = lease(stack.db_url, job, 1)
    write(stack.db_url, again, [Outcome(2, "succeeded", output="yes", attempts=4, attempt=4,
                                        tries=[Try(4, Step.FIRST, "p", {"seed": 4}, 3,
                                                   output="yes")])])
    with db.session(stack.db_url) as session:
        ledger = list(session.scalars(select(Attempt.attempt).where(
            Attempt.job_id == job, Attempt.item_seq == 2).order_by(Attempt.attempt)))
    assert ledger == [1, 2, 3, 4]
    shown = status(stack.db_url, job)
    assert (shown["state"], shown["succeeded"], shown["failed"]) == ("completed", 6, 0)


def test_retry_with_neither_flag_takes_failed_and_review_items(stack: Stack,
                                                               tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    _ran(stack, job)
    done = retry(stack.db_url, stack.broker_url, job)
    assert (done.items, done.chunks) == (2, 1)
    assert {seq for seq, (s, _) in _items(stack, job).items() if s == "pending"} == {2, 3}


def test_retry_needs_review_leaves_the_failed_items_failed(stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    _ran(stack, job)
    done = retry(stack.db_url, stack.broker_url, job, needs_review=True)
    items = _items(stack, job)
    assert done.items == 1 and items[3][0] == "pending" and items[2][0] == "failed"


def test_retry_reopens_a_cancelled_job_and_drops_a_deadline_that_passed(
        stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    write(stack.db_url, lease(stack.db_url, job, 0),
          [Outcome(0, "succeeded", output="a"), Outcome(1, "succeeded", output="b")])
    with db.session(stack.db_url) as session, session.begin():
        session.execute(update(Job).where(Job.id == job).values(
            deadline=datetime.now(UTC) - timedelta(minutes=1)))
    cancel(stack.db_url, job)

    done = retry(stack.db_url, stack.broker_url, job, failed=True)

    assert (done.items, done.chunks) == (4, 2)  # what the cancel stopped runs too
    with db.session(stack.db_url) as session:
        reopened = session.get(Job, job)
        assert reopened is not None
        assert (reopened.state, reopened.deadline, reopened.finished_at) == (
            JobState.QUEUED, None, None)


def test_retry_replaces_the_checks_and_budget_and_refuses_a_bad_check_naming_it(
        stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path, checks=["non_empty"])
    _ran(stack, job)
    with pytest.raises(ConfigError, match="no_such_check"):
        retry(stack.db_url, stack.broker_url, job, checks=["no_such_check"])
    assert status(stack.db_url, job)["state"] == "completed"  # nothing changed
    assert _items(stack, job)[2][0] == "failed"

    retry(stack.db_url, stack.broker_url, job, checks=["length:max=80"], max_attempts=5)
    with db.session(stack.db_url) as session:
        spec = JobSpec.model_validate(session.scalar(select(Job.spec).where(Job.id == job)))
    assert [c.name for c in spec.checks] == ["length"] and spec.max_attempts == 5


def test_retry_refuses_a_job_still_running_and_a_batch(stack: Stack, tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    with pytest.raises(NotRetryable, match="is queued: retry reopens a job that has ended"):
        retry(stack.db_url, stack.broker_url, job)

    _ran(stack, job)
    with db.session(stack.db_url) as session, session.begin():
        session.add(Batch(id="batch_1", job_id=job, input_file_id="file_1",
                          endpoint="/v1/chat/completions", completion_window="24h"))
    with pytest.raises(NotRetryable, match="batch_1, whose end is final"):
        retry(stack.db_url, stack.broker_url, job)
    assert _items(stack, job)[2][0] == "failed"


def test_an_item_that_copies_a_retried_one_runs_again_with_it(stack: Stack,
                                                             tmp_path: Path) -> None:
    job = _job(stack, tmp_path, n=4)
    with db.session(stack.db_url) as session, session.begin():  # item 3 asks what item 2 asks
        session.execute(update(Item).where(Item.job_id == job, Item.seq == 3)
                        .values(same_as=2))
    write(stack.db_url, lease(stack.db_url, job, 0),
          [Outcome(0, "succeeded", output="a"), Outcome(1, "succeeded", output="b")])
    write(stack.db_url, lease(stack.db_url, job, 1), [_failed(2, 1)])
    assert _items(stack, job)[3][0] == "failed"  # it took item 2's answer

    done = retry(stack.db_url, stack.broker_url, job, failed=True)
    assert done.items == 2
    write(stack.db_url, lease(stack.db_url, job, 1), [Outcome(2, "succeeded", output="c")])
    assert _items(stack, job)[3][0] == "succeeded"
    assert status(stack.db_url, job)["state"] == "completed"


def test_the_cli_says_what_runs_again_and_when_nothing_does(run: Invoke, stack: Stack,
                                                            tmp_path: Path) -> None:
    job = _job(stack, tmp_path)
    _ran(stack, job)
    shown = json.loads(run("retry", job, "--failed", "--json").stdout)
    assert shown == {"job_id": job, "items": 1, "chunks": 1, "state": "queued"}
    write(stack.db_url, lease(stack.db_url, job, 1), [Outcome(2, "succeeded", output="c")])
    assert "nothing to run again" in run("retry", job[:8], "--failed").stdout
    assert "no job 'nope-job'" in run("retry", "nope-job", code=4).output


def test_a_reviewed_label_stays_and_a_replaced_answer_loses_its_verdict(
        stack: Stack, tmp_path: Path) -> None:
    from producer import reviews

    job = _job(stack, tmp_path)
    _ran(stack, job)
    reviews.record(stack.db_url, job, 3, "accepted", reviewer="ana")  # kept for review
    reviews.record(stack.db_url, job, 2, "rejected", reviewer="ana")  # failed
    done = retry(stack.db_url, stack.broker_url, job)
    assert done.items == 1  # item 2 only: a person settled item 3
    assert reviews.of_item(stack.db_url, job, 2) is None
    assert reviews.of_item(stack.db_url, job, 3) is not None


def test_a_poison_item_is_not_run_again(stack: Stack, tmp_path: Path) -> None:
    from worker.leases import MAX_ITEM_DEATHS

    job = _job(stack, tmp_path)
    _ran(stack, job)
    with db.session(stack.db_url) as session, session.begin():
        session.execute(update(Item).where(Item.job_id == job, Item.seq == 2)
                        .values(deaths=MAX_ITEM_DEATHS))
    assert retry(stack.db_url, stack.broker_url, job, failed=True).items == 0
