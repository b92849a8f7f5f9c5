"""Chunk leases: who runs a chunk, until when, kept alive by a heartbeat.

A redelivered or duplicated message finds the chunk leased or done and is dropped;
a chunk whose worker died is free again once its lease runs out, without waiting
for Redis's visibility timeout.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session

from schemas.db import session
from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus, Job, JobState, utcnow

log = logging.getLogger(__name__)


def claim(db_url: str, job_id: str, seq: int, owner: str, ttl: float) -> int:
    """Take the chunk if it is free (pending, or leased by someone whose lease expired).

    Returns how many times the chunk has now been taken (0: not taken)."""
    with session(db_url) as db, db.begin():
        return take(db, job_id, seq, owner, ttl)


def take(db: Session, job_id: str, seq: int, owner: str, ttl: float) -> int:
    """`claim` within the caller's transaction (worker.chunks.rehearse rolls it back)."""
    now = utcnow()
    taken = cast(CursorResult[Any], db.execute(
        update(Chunk)
        .where(Chunk.job_id == job_id, Chunk.seq == seq)
        .where(or_(Chunk.status == ChunkStatus.PENDING,
                   and_(Chunk.status == ChunkStatus.LEASED, Chunk.lease_expires_at < now)))
        .values(status=ChunkStatus.LEASED, lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=ttl),
                deliveries=Chunk.deliveries + 1)
    )).rowcount
    if not taken:
        if db.get(Chunk, (job_id, seq)) is None:
            log.warning("chunk %s/%s is not in this worker's database: does another "
                        "deployment, with another database, share this Redis database?",
                        job_id, seq)
        return 0
    db.execute(update(Item).where(Item.job_id == job_id, Item.chunk == seq,
                                  Item.status == ItemStatus.PENDING)
               .values(status=ItemStatus.RUNNING))
    db.execute(update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED)
               .values(state=JobState.RUNNING, started_at=now))
    return int(db.scalar(select(Chunk.deliveries)
                         .where(Chunk.job_id == job_id, Chunk.seq == seq)) or 0)


def release(db_url: str, job_id: str, seq: int, owner: str) -> None:
    """Hand a chunk back (shutdown, engine death): it is pending again at once."""
    with session(db_url) as db, db.begin():
        released = cast(CursorResult[Any], db.execute(
            update(Chunk)
            .where(Chunk.job_id == job_id, Chunk.seq == seq, Chunk.lease_owner == owner,
                   Chunk.status == ChunkStatus.LEASED)
            .values(status=ChunkStatus.PENDING, lease_owner=None, lease_expires_at=None)
        )).rowcount
        if released:
            db.execute(update(Item).where(Item.job_id == job_id, Item.chunk == seq,
                                          Item.status == ItemStatus.RUNNING)
                       .values(status=ItemStatus.PENDING))


class Heartbeat:
    """Renews the leases this process holds, every third of their length."""

    def __init__(self, db_url: str, owner: str, ttl: float) -> None:
        self.db_url, self.owner, self.ttl = db_url, owner, ttl
        self.held: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def hold(self, job_id: str, seq: int) -> None:
        with self._lock:
            self.held.add((job_id, seq))

    def drop(self, job_id: str, seq: int) -> None:
        with self._lock:
            self.held.discard((job_id, seq))

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception:  # a missed beat is survivable; the next one may get through
                log.exception("lease heartbeat failed")

    def renew(self) -> None:
        with self._lock:
            held = list(self.held)
        if not held:
            return
        expires = utcnow() + timedelta(seconds=self.ttl)
        with session(self.db_url) as db, db.begin():
            for job_id, seq in held:
                db.execute(update(Chunk)
                           .where(Chunk.job_id == job_id, Chunk.seq == seq,
                                  Chunk.lease_owner == self.owner,
                                  Chunk.status == ChunkStatus.LEASED)
                           .values(lease_expires_at=expires))
