"""Run one chunk: lease it, generate its items, write every outcome in one transaction."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from schemas.db import session, upsert
from schemas.spec import JobSpec
from schemas.tables import (
    Chunk,
    ChunkStatus,
    Item,
    ItemStatus,
    Job,
    JobState,
    Result,
    utcnow,
)
from worker import leases
from worker.engine import EngineHost
from worker.generate import Outcome, run_items

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a worker process holds for its whole life: one engine, where to write, who it is."""

    host: EngineHost
    db_url: str
    owner: str
    lease_seconds: float
    heartbeat: leases.Heartbeat


def run_chunk(rt: Runtime, job_id: str, seq: int) -> str:
    """Returns what happened, for the log: "done", "skipped" (leased or done elsewhere)…"""
    if not leases.claim(rt.db_url, job_id, seq, rt.owner, rt.lease_seconds):
        return "skipped"
    rt.heartbeat.hold(job_id, seq)
    try:
        with session(rt.db_url) as db:
            job = db.get(Job, job_id)
            if job is None or job.state == JobState.CANCELLED:
                _finish_cancelled(rt, job_id, seq)
                return "cancelled"
            spec = JobSpec.model_validate(job.spec)
            items = db.execute(
                select(Item.seq, Item.key, Item.payload)
                .where(Item.job_id == job_id, Item.chunk == seq,
                       Item.status.in_((ItemStatus.PENDING, ItemStatus.RUNNING)))
                .order_by(Item.seq)
            ).all()
        outcomes = run_items(rt.host, spec, [tuple(i) for i in items], f"{job_id}:{seq}")
        write(rt.db_url, job_id, seq, rt.owner, outcomes)
        return "done"
    except BaseException:
        leases.release(rt.db_url, job_id, seq, rt.owner)
        raise
    finally:
        rt.heartbeat.drop(job_id, seq)


def write(db_url: str, job_id: str, seq: int, owner: str, outcomes: list[Outcome]) -> None:
    """Results upserted (one row per item however often the chunk ran), statuses, chunk done."""
    with session(db_url) as db, db.begin():
        # Chunks of one job finish one at a time, so the last one sees every other's items
        # final and marks the job completed (PostgreSQL; SQLite already serializes writers).
        db.execute(select(Job.id).where(Job.id == job_id).with_for_update())
        dialect = db.get_bind().dialect.name
        if outcomes:
            rows = [o.row(job_id, owner) for o in outcomes]
            db.execute(upsert(Result.__table__, dialect, ["job_id", "item_seq"]), rows)
            by_status: dict[str, list[int]] = defaultdict(list)
            for o in outcomes:
                by_status[o.status].append(o.item_seq)
            items = cast(Table, Item.__table__)
            stmt = (items.update()
                    .where(items.c.job_id == bindparam("j"), items.c.seq == bindparam("s"))
                    .values(status=bindparam("st")))
            db.execute(stmt, [{"j": job_id, "s": s, "st": st}
                              for st, seqs in by_status.items() for s in seqs])
        db.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq)
                   .values(status=ChunkStatus.DONE, lease_owner=None, lease_expires_at=None))
        _maybe_complete(db, job_id)


def _finish_cancelled(rt: Runtime, job_id: str, seq: int) -> None:
    with session(rt.db_url) as db, db.begin():
        db.execute(update(Item).where(Item.job_id == job_id, Item.chunk == seq,
                                      Item.status.in_((ItemStatus.PENDING, ItemStatus.RUNNING)))
                   .values(status=ItemStatus.CANCELLED))
        db.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq)
                   .values(status=ChunkStatus.DONE, lease_owner=None, lease_expires_at=None))


def _maybe_complete(db: Session, job_id: str) -> None:
    open_items = db.scalar(select(func.count()).select_from(Item).where(
        Item.job_id == job_id, Item.status.in_((ItemStatus.PENDING, ItemStatus.RUNNING))))
    if open_items == 0:
        db.execute(update(Job).where(Job.id == job_id, Job.state.in_(
            (JobState.QUEUED, JobState.RUNNING))).values(state=JobState.COMPLETED,
                                                         finished_at=utcnow()))
