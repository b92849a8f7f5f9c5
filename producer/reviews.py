"""The review queue: a person's verdict on the answers the bar was least sure of. A job's
queue holds, in this order, its labels kept for review (`needs_review`), its failed items,
and a spot check of its passed ones (a fixed pseudo-random `SAMPLE_PERCENT` of them: the
bar itself under review). Each verdict is stored in `reviews`, for the item and for the
items that copy its answer; a correction is the item's final answer in every export."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, delete, exists, insert, select

from schemas import db
from schemas.errors import InputError
from schemas.spec import JobSpec
from schemas.states import ItemStatus, Quality, ReviewVerdict
from schemas.tables import Item, Job, Result, Review, utcnow

QUEUES = ("needs_review", "failed", "sample")
SAMPLE_PERCENT = 5


def next_in_queue(db_url: str, job_id: str, *, queue: str = QUEUES[0], after: int = -1
                  ) -> tuple[str, int] | None:
    """The next item no one has reviewed: in `queue` after item `after`, then in the queues
    that follow; None when the queue is done."""
    if queue not in QUEUES:
        queue, after = QUEUES[0], -1
    unreviewed = ~exists().where(Review.job_id == Result.job_id,
                                 Review.item_seq == Result.item_seq)
    with db.reader(db_url) as session:
        for name in QUEUES[QUEUES.index(queue):]:
            seq = session.scalar(select(Result.item_seq).where(
                Result.job_id == job_id, Result.item_seq > after, _in(name), unreviewed)
                .order_by(Result.item_seq).limit(1))
            if seq is not None:
                return name, seq
            after = -1
    return None


def _in(queue: str) -> ColumnElement[bool]:
    if queue == "needs_review":
        return Result.quality == Quality.NEEDS_REVIEW
    if queue == "failed":
        return Result.status == ItemStatus.FAILED
    return ((Result.status == ItemStatus.SUCCEEDED)
            & (Result.quality.is_(None) | (Result.quality != Quality.NEEDS_REVIEW))
            & ((Result.item_seq * 7919) % 100 < SAMPLE_PERCENT))


def record(db_url: str, job_id: str, seq: int, verdict: str, *, reviewer: str,
           correction: str | None = None, note: str | None = None) -> int:
    """Store a verdict on the item and on the items that copy its answer; returns how many
    items it covers. Refused (InputError, naming what is wrong) before anything is kept."""
    if verdict not in ReviewVerdict.ALL:
        raise InputError(f"verdict {verdict!r}: one of {', '.join(ReviewVerdict.ALL)}")
    correction = (correction or "").strip() or None
    if (verdict == ReviewVerdict.CORRECTED) != (correction is not None):
        raise InputError("a correction comes with the verdict corrected, and only with it")
    with db.session(db_url) as session, session.begin():
        spec = session.scalar(select(Job.spec).where(Job.id == job_id))
        if spec is None or session.get(Result, (job_id, seq)) is None:
            raise InputError(f"item {seq} of job {job_id} has no answer to review")
        labels = JobSpec.model_validate(spec).labels
        if correction is not None and labels and correction not in labels:
            raise InputError(f"correction {correction!r}: not one of the job's labels "
                             f"({', '.join(labels)})")
        seqs = [seq, *session.scalars(select(Item.seq).where(Item.job_id == job_id,
                                                             Item.same_as == seq))]
        session.execute(delete(Review).where(Review.job_id == job_id,
                                             Review.item_seq.in_(seqs)))
        now = utcnow()
        session.execute(insert(Review), [
            {"job_id": job_id, "item_seq": s, "verdict": verdict, "correction": correction,
             "note": (note or "").strip() or None, "reviewer": reviewer, "created_at": now}
            for s in seqs])
    return len(seqs)


def of_item(db_url: str, job_id: str, seq: int) -> dict[str, Any] | None:
    with db.reader(db_url) as session:
        found = session.get(Review, (job_id, seq))
        return None if found is None else {
            "verdict": found.verdict, "correction": found.correction, "note": found.note,
            "reviewer": found.reviewer, "created_at": found.created_at}
