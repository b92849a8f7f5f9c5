"""Reconcile: SQL is the truth, Redis only says "go". It does the work that falls due
with time, and heals what the broker lost.

- A scheduled job whose start time has passed is enqueued (state `queued`).
- A job past its deadline is cancelled: its pending items end `cancelled`, chunks
  already running finish. A cancelled job's chunks that no live worker holds (handed
  back, or their worker's lease ran out) end too, their items `cancelled`.
- A chunk that no message will start (the broker lost it, or its worker died) is
  enqueued again: when its lease has expired, or when it is pending and its model's
  queue holds no messages at all. A message too many is harmless: the lease drops it.
  Only chunks already sent count (a job's `enqueued`, see worker.broker): the rest
  wait their turn in the job's window.

Run by `nightshift reconcile` and by every worker every half lease, so a scheduled job
starts within that long of its start time while any worker is up.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update

from schemas import db
from schemas.settings import Settings
from schemas.tables import Chunk, ChunkStatus, Job, JobState
from worker import broker
from worker.broker import message_priority
from worker.cancel import end_abandoned, stop


@dataclass
class Reconciled:
    started: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    # Chunks of cancelled jobs ended because no live worker held them.
    abandoned: int = 0
    # Chunk messages sent again, per model.
    resent: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.started or self.expired or self.abandoned
                    or any(self.resent.values()))


def reconcile(db_url: str, broker_url: str, *, now: datetime | None = None,
              window: int = Settings.window) -> Reconciled:
    """Every pass's time is the database's (worker.leases reckons leases by it), unless
    given."""
    if now is None:
        with db.reader(db_url) as session:
            now = db.clock(session)
    done = Reconciled(expired=expire(db_url, now))
    with db.session(db_url) as session, session.begin():
        done.abandoned = end_abandoned(session)
    done.started = start_due(db_url, broker_url, now, window)
    done.resent = resend(db_url, broker_url, now)
    return done


def expire(db_url: str, now: datetime) -> list[str]:
    """Cancel every open job whose deadline has passed; returns their ids."""
    with db.session(db_url) as session, session.begin():
        jobs = session.scalars(select(Job).where(Job.deadline <= now,
                                           Job.state.not_in(JobState.FINAL))
                         .with_for_update()).all()
        for job in jobs:
            stop(session, job, now)
        return [job.id for job in jobs]


def start_due(db_url: str, broker_url: str, now: datetime, window: int) -> list[str]:
    """Enqueue every scheduled job whose start time has passed, highest priority first.

    The state changes in SQL before the messages go out: if the broker is lost in
    between, the job is queued with pending chunks, which `resend` finds."""
    with db.reader(db_url) as session:
        due = session.execute(select(Job.id, Job.model, Job.chunks, Job.priority)
                        .where(Job.state == JobState.SCHEDULED, Job.start_at <= now)
                        .order_by(Job.priority.desc(), Job.start_at)).all()
    started = []
    for job_id, model, chunks, priority in due:
        first = broker.first_window(chunks, window)
        with db.session(db_url) as session, session.begin():
            won = cast(CursorResult[Any], session.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.SCHEDULED)
                .values(state=JobState.QUEUED, enqueued=len(first)))).rowcount
        if won:  # another reconciler may have started it a moment ago
            broker.enqueue(broker_url, model, job_id, first,
                           priority=message_priority(priority))
            started.append(job_id)
    return started


def resend(db_url: str, broker_url: str, now: datetime) -> dict[str, int]:
    """Returns how many chunks were enqueued again, per model."""
    with db.reader(db_url) as session:
        rows = session.execute(
            select(Job.id, Job.model, Job.priority, Chunk.seq, Chunk.status)
            .join(Chunk, Chunk.job_id == Job.id)
            .where(Job.state.in_((JobState.QUEUED, JobState.RUNNING)), Chunk.seq < Job.enqueued)
            .where(or_(Chunk.status == ChunkStatus.PENDING,
                       and_(Chunk.status == ChunkStatus.LEASED, Chunk.lease_expires_at < now)))
        ).all()
    by_model: dict[str, list[Any]] = defaultdict(list)
    for job_id, model, priority, seq, status in rows:
        by_model[model].append((job_id, priority, seq, status))
    sent: dict[str, int] = {}
    for model, chunks in by_model.items():
        empty = broker.queue_depth(broker_url, model) == 0
        by_job: dict[tuple[str, int], list[int]] = defaultdict(list)
        for job_id, priority, seq, status in chunks:
            if status == ChunkStatus.LEASED or empty:
                by_job[(job_id, priority)].append(seq)
        sent[model] = sum(broker.enqueue(broker_url, model, job_id, seqs,
                                         priority=message_priority(priority))
                          for (job_id, priority), seqs in by_job.items())
    return sent
