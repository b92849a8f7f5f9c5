"""Stopping a job, for cancel and for a deadline: what has not started is cancelled, and
the chunks of cancelled jobs that no live worker holds end, their items with them. A
cancelled job so keeps nothing pending or running (reconcile's pass, worker.reconcile,
finds the chunks whose worker died after the cancel)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from schemas import db
from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus, Job, JobState

# How long after a job is cancelled reconcile still looks for chunks no worker holds.
ABANDONED_WITHIN = timedelta(days=7)


def stop(session: Any, job: Job, now: datetime) -> bool:
    """Cancel what has not started, inside the caller's transaction (cancel, deadline),
    on a job the caller locked; False when it had ended already."""
    if job.state in JobState.FINAL:
        return False
    job.state, job.finished_at = JobState.CANCELLED, now
    session.execute(update(Item).where(Item.job_id == job.id, Item.status == ItemStatus.PENDING)
              .values(status=ItemStatus.CANCELLED))
    session.execute(update(Chunk).where(Chunk.job_id == job.id, Chunk.status == ChunkStatus.PENDING)
              .values(status=ChunkStatus.DONE))
    end_abandoned(session, job_id=job.id)
    return True


def end_abandoned(session: Any, *, job_id: str | None = None) -> int:
    """The chunks of cancelled jobs that no live worker holds (handed back, or their
    worker's lease ran out by the database's clock) are done and their open items
    cancelled: a cancelled job keeps nothing pending or running. Returns how many.

    Only jobs cancelled in the last `ABANDONED_WITHIN` are looked at (a chunk still
    running then was handed back or lost long ago), so the pass stays cheap however
    many jobs a database keeps. Chunks are locked in key order, as heartbeats renew."""
    now = db.clock(session)
    query = (select(Chunk.job_id, Chunk.seq).join(Job, Job.id == Chunk.job_id)
             .where(Job.state == JobState.CANCELLED,
                    Job.finished_at >= now - ABANDONED_WITHIN)
             .where(or_(Chunk.status == ChunkStatus.PENDING,
                        and_(Chunk.status == ChunkStatus.LEASED,
                             Chunk.lease_expires_at < now)))
             .order_by(Chunk.job_id, Chunk.seq))
    if job_id is not None:
        query = query.where(Chunk.job_id == job_id)
    ended = session.execute(query.with_for_update(of=Chunk)).all()
    for chunk_job, seq in ended:
        session.execute(update(Chunk).where(Chunk.job_id == chunk_job, Chunk.seq == seq)
                  .values(status=ChunkStatus.DONE, lease_owner=None, lease_expires_at=None))
        session.execute(update(Item).where(Item.job_id == chunk_job, Item.chunk == seq,
                                     Item.status.in_((ItemStatus.PENDING, ItemStatus.RUNNING)))
                  .values(status=ItemStatus.CANCELLED))
    return len(ended)
