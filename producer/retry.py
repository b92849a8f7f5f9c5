"""`nightshift retry`: a job that has ended runs again, in the same job, the items that
failed or await review (and those a cancel or deadline stopped), with a fresh budget of
attempts or a new bar. Their earlier attempts stay in the ledger; the new ones are
numbered after them, and a retried answer is sampled a little warmer, so that a greedy
answer does not simply repeat itself.

Only the items retried run: their chunks are pending again and sent at once (the job's
window is for a first run), and their old results stay until the new ones replace them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, exists, func, select, update
from sqlalchemy.orm import aliased

from schemas import db
from schemas.errors import ConfigError, JobNotFound, NotRetryable, reason
from schemas.spec import JobSpec
from schemas.states import ItemStatus, JobState, Quality
from schemas.tables import Attempt, Batch, Chunk, ChunkStatus, Item, Job, Result, Review
from worker import broker
from worker.broker import message_priority
from worker.leases import MAX_ITEM_DEATHS


@dataclass(frozen=True)
class Retried:
    job_id: str
    items: int
    chunks: int
    state: str


def retry(db_url: str, broker_url: str, job_id: str, *, failed: bool = False,
          needs_review: bool = False, max_attempts: int | None = None,
          checks: list[str] | None = None) -> Retried:
    """Neither `failed` nor `needs_review`: both. `checks` replace the job's checks and
    `max_attempts` its budget, for the items that run again (the others have ended)."""
    if not (failed or needs_review):
        failed = needs_review = True
    with db.session(db_url) as session, session.begin():
        # Locked: a worker's write that completes a job takes this row first too.
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} in this database (see `nightshift status`)")
        _check_retryable(session, job)
        spec = _new_spec(job.spec, max_attempts=max_attempts, checks=checks)
        model, priority, state, chunk_count = job.model, job.priority, job.state, job.chunks
        earlier = (select(func.max(Attempt.attempt))
                   .where(Attempt.job_id == Item.job_id, Attempt.item_seq == Item.seq)
                   .scalar_subquery())
        chosen = _chosen(job_id, failed=failed, needs_review=needs_review)
        # The items that copy a chosen one first: once it is pending, it is not chosen.
        twins = _changed(session, update(Item).where(
            Item.job_id == job_id, Item.same_as.in_(chosen)).values(status=ItemStatus.PENDING))
        items = _changed(session, update(Item).where(Item.job_id == job_id, Item.seq.in_(chosen))
                         .values(status=ItemStatus.PENDING,
                                 attempted=func.coalesce(earlier, Item.attempted)))
        if not items:
            return Retried(job_id, 0, 0, state)
        # A person's verdict was on the answer these items are about to replace.
        again = select(Item.seq).where(Item.job_id == job_id,
                                       Item.status == ItemStatus.PENDING)
        _changed(session, delete(Review).where(Review.job_id == job_id,
                                               Review.item_seq.in_(again)))
        # The job had ended: its pending items are the ones just chosen.
        chunks = sorted(session.scalars(select(Item.chunk).where(
            Item.job_id == job_id, Item.status == ItemStatus.PENDING).distinct()))
        _changed(session, update(Chunk).where(Chunk.job_id == job_id, Chunk.seq.in_(chunks))
                 .values(status=ChunkStatus.PENDING, lease_owner=None, lease_expires_at=None,
                         deliveries=0))
        now = db.clock(session)
        deadline = job.deadline if job.deadline and _aware(job.deadline) > now else None
        _changed(session, update(Job).where(Job.id == job_id).values(
            state=JobState.QUEUED, finished_at=None, deadline=deadline, enqueued=chunk_count,
            spec=spec.model_dump(mode="json")))
    broker.enqueue(broker_url, model, job_id, chunks, priority=message_priority(priority))
    return Retried(job_id, items + twins, len(chunks), JobState.QUEUED)


def _check_retryable(session: Any, job: Job) -> None:
    if job.state not in JobState.FINAL:
        raise NotRetryable(f"job {job.id} is {job.state}: retry reopens a job that has "
                           "ended (wait for it, or `nightshift cancel` it first)")
    batch = session.scalar(select(Batch.id).where(Batch.job_id == job.id))
    if batch is not None:
        raise NotRetryable(f"job {job.id} is the Batch API's {batch}, whose end is final: "
                           "send its failed requests as a new batch")


def _new_spec(stored: dict[str, Any], *, max_attempts: int | None,
              checks: list[str] | None) -> JobSpec:
    """The job's spec with the new budget and bar, validated as submit validates one."""
    from quality.checks import validate_spec

    changed = dict(stored)
    if max_attempts is not None:
        changed["max_attempts"] = max_attempts
    if checks:
        changed["checks"] = list(checks)
    try:
        # Only the checks as at submit: the job's other paths (a LoRA adapter's directory)
        # need not exist where retry runs.
        return validate_spec(JobSpec.model_validate(changed), at_submit=bool(checks))
    except ValueError as exc:  # a pydantic ValidationError is one too
        raise ConfigError(f"job spec: {reason(exc)}") from None


def _chosen(job_id: str, *, failed: bool, needs_review: bool) -> Select[Any]:
    """The items to run again: cancelled ones always (retry is how a stopped job is
    reopened), failed ones, and succeeded answers kept for review that no person has
    reviewed. Not the items that take another's answer (`same_as`): they follow the item
    they copy; nor poison items."""
    item = aliased(Item)  # a subquery of statements on items: not correlated to them
    statuses = [ItemStatus.CANCELLED] + ([ItemStatus.FAILED] if failed else [])
    picked: ColumnElement[bool] = item.status.in_(statuses)
    if needs_review:  # and no person has given their verdict
        review = select(Result.item_seq).where(
            Result.job_id == job_id, Result.quality == Quality.NEEDS_REVIEW,
            ~exists().where(Review.job_id == Result.job_id,
                            Review.item_seq == Result.item_seq))
        picked = picked | and_(item.status == ItemStatus.SUCCEEDED, item.seq.in_(review))
    # A poison item (workers died running it) would only kill workers again.
    return select(item.seq).where(item.job_id == job_id, item.same_as.is_(None), picked,
                                  item.deaths < MAX_ITEM_DEATHS)


def _changed(session: Any, statement: Any) -> int:
    """Rows a bulk UPDATE changed (the session's objects are not kept in step)."""
    done = session.execute(statement.execution_options(synchronize_session=False))
    return int(done.rowcount)


def _aware(when: Any) -> Any:
    """SQLite hands back naive datetimes; they are UTC."""
    from datetime import UTC

    return when if when.tzinfo else when.replace(tzinfo=UTC)
