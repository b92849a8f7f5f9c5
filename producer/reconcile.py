"""Reconcile: SQL is the truth, Redis only says "go". Find chunks that no message will
start (the broker lost them, or their worker died) and enqueue them again.

A chunk needs a message when its lease has expired, or when it is pending and its
model's queue holds no messages at all. A message too many is harmless: the lease
drops it. Run by `nightshift reconcile` and periodically by every worker.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import and_, or_, select

from producer import broker
from schemas import db
from schemas.tables import Chunk, ChunkStatus, Job, JobState, utcnow
from worker.app import app_for, queue_for


def queue_depth(broker_url: str, model: str) -> int:
    with app_for(broker_url).connection_for_write() as conn:
        try:
            return int(conn.default_channel.queue_declare(
                queue_for(model), passive=True).message_count)
        except Exception:  # a queue never declared holds nothing
            return 0


def reconcile(db_url: str, broker_url: str) -> dict[str, int]:
    """Returns how many chunks were enqueued again, per model."""
    now = utcnow()
    with db.session(db_url) as s:
        rows = s.execute(
            select(Job.id, Job.model, Chunk.seq, Chunk.status)
            .join(Chunk, Chunk.job_id == Job.id)
            .where(Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
            .where(or_(Chunk.status == ChunkStatus.PENDING,
                       and_(Chunk.status == ChunkStatus.LEASED, Chunk.lease_expires_at < now)))
        ).all()
    by_model: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for job_id, model, seq, status in rows:
        by_model[model].append((job_id, seq, status))
    sent: dict[str, int] = {}
    for model, chunks in by_model.items():
        empty = queue_depth(broker_url, model) == 0
        todo = [(j, q) for j, q, st in chunks if st == ChunkStatus.LEASED or empty]
        by_job: dict[str, list[int]] = defaultdict(list)
        for job_id, seq in todo:
            by_job[job_id].append(seq)
        sent[model] = sum(broker.enqueue(broker_url, model, job_id, seqs)
                          for job_id, seqs in by_job.items())
    return sent
