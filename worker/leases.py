"""Chunk leases: who runs a chunk, until when, kept alive by a heartbeat, and fencing
every write.

A redelivered or duplicated message finds the chunk leased or done and is dropped;
a chunk whose worker died is free again once its lease runs out, without waiting
for Redis's visibility timeout. A lease is (owner, delivery number): a worker that
lost its lease (paused past it, while another took the chunk) writes nothing, and
expiry is reckoned by the database's clock, not by each worker's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from schemas import db
from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus, Job, JobState

log = logging.getLogger(__name__)

# The infrastructure lane's limits. A chunk redelivered this often (workers died holding
# it twice) runs one item at a time (worker.chunks), so a deadly item shows itself...
ISOLATE_FROM_DELIVERY = 3
# ...and an item in flight, alone, for this many worker deaths fails as a poison item.
# One death is usually not the item's fault (a deploy, an OOM kill, a lost machine).
MAX_ITEM_DEATHS = 2


@dataclass(frozen=True)
class Lease:
    """One taking of a chunk: the owner and which delivery it is."""

    job_id: str
    seq: int
    owner: str
    deliveries: int

    @property
    def tag(self) -> str:
        """This taking's part of its engine request ids (worker.requests): an abort or a
        solo run of one delivery never touches another's requests."""
        return f"{self.job_id}:{self.seq}.{self.deliveries}"

    def bound(self) -> dict[str, Any]:
        """This lease's values for the statements that change its chunk while it holds it."""
        return {"held_job_id": self.job_id, "held_seq": self.seq, "held_owner": self.owner,
                "held_deliveries": self.deliveries}


# The statements that change a chunk while a lease holds it, built once and bound with
# `Lease.bound()`: every chunk's write sends its fence (built anew, 0.14 ms more a write).
_HELD = and_(Chunk.job_id == bindparam("held_job_id"), Chunk.seq == bindparam("held_seq"),
             Chunk.lease_owner == bindparam("held_owner"),
             Chunk.deliveries == bindparam("held_deliveries"), Chunk.status == ChunkStatus.LEASED)
# Run in sessions too, which hold no chunks: nothing to synchronize (a session would
# evaluate the WHERE against its objects with the parameters unbound).
_UPDATE_HELD = update(Chunk).where(_HELD).execution_options(synchronize_session=False)
_FENCE = {False: _UPDATE_HELD.values(lease_owner=bindparam("held_owner")),
          True: _UPDATE_HELD.values(status=ChunkStatus.DONE, lease_owner=None,
                                    lease_expires_at=None)}
_RELEASE = _UPDATE_HELD.values(status=ChunkStatus.PENDING, lease_owner=None,
                               lease_expires_at=None)
_RENEW = _UPDATE_HELD.values(lease_expires_at=bindparam("expires"))


class LeaseLost(Exception):
    """This worker no longer holds the chunk: another took it, or it ended."""


def claim(db_url: str, job_id: str, seq: int, owner: str, ttl: float) -> Lease | None:
    """Take the chunk if it is free (pending, or leased by someone whose lease expired)."""
    with db.session(db_url) as session, session.begin():
        return take(session, job_id, seq, owner, ttl)


def take(session: Session, job_id: str, seq: int, owner: str, ttl: float) -> Lease | None:
    """`claim` within the caller's transaction (worker.chunks.rehearse rolls it back).

    The job's row is locked first, as cancel, deadlines and result writes lock it, so no
    two of them wait on each other's rows in opposite orders (PostgreSQL)."""
    now = db.clock(session)
    if session.scalar(select(Job.state).where(Job.id == job_id).with_for_update()) is None:
        log.warning("chunk %s/%s is not in this worker's database: does another "
                    "deployment, with another database, share this Redis database?",
                    job_id, seq)
        return None
    taken = cast(CursorResult[Any], session.execute(
        update(Chunk)
        .where(Chunk.job_id == job_id, Chunk.seq == seq)
        .where(or_(Chunk.status == ChunkStatus.PENDING,
                   and_(Chunk.status == ChunkStatus.LEASED, Chunk.lease_expires_at < now)))
        .values(status=ChunkStatus.LEASED, lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=ttl),
                deliveries=Chunk.deliveries + 1)
    )).rowcount
    if not taken:
        return None
    session.execute(update(Item).where(Item.job_id == job_id, Item.chunk == seq,
                                  Item.status == ItemStatus.PENDING)
               .values(status=ItemStatus.RUNNING))
    session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED)
               .values(state=JobState.RUNNING, started_at=func.coalesce(Job.started_at, now)))
    deliveries = session.scalar(select(Chunk.deliveries).where(Chunk.job_id == job_id,
                                                          Chunk.seq == seq))
    return Lease(job_id, seq, owner, int(deliveries or 0))


def fence(session: Session | Connection, lease: Lease, *, done: bool) -> None:
    """In the caller's write transaction, before anything else it writes: raise LeaseLost
    unless `lease` still holds the chunk. The row it updates stays locked until commit,
    so no one can take the chunk in between. With `done`, the chunk is finished too."""
    held = cast(CursorResult[Any], session.execute(_FENCE[done], lease.bound())).rowcount
    if not held:
        raise LeaseLost(f"chunk {lease.tag} is no longer leased by {lease.owner} "
                        f"(delivery {lease.deliveries})")


def release(db_url: str, lease: Lease) -> bool:
    """Hand a chunk back (shutdown, engine death): it is pending again at once. False when
    the lease was no longer held (nothing to hand back)."""
    with db.session(db_url) as session, session.begin():
        released = cast(CursorResult[Any], session.execute(_RELEASE, lease.bound())).rowcount
        if released:
            session.execute(update(Item).where(Item.job_id == lease.job_id, Item.chunk == lease.seq,
                                          Item.status == ItemStatus.RUNNING)
                       .values(status=ItemStatus.PENDING))
    return bool(released)


class Heartbeat:
    """Renews the leases this process holds, every third of their length, while `healthy`
    says the worker makes progress (a stalled engine lets its leases run out). A lease
    found gone is reported to `on_lost` once."""

    def __init__(self, db_url: str, owner: str, ttl: float, *,
                 healthy: Callable[[], bool] = lambda: True,
                 on_lost: Callable[[Lease], None] = lambda lease: None) -> None:
        self.db_url, self.owner, self.ttl = db_url, owner, ttl
        self.healthy, self.on_lost = healthy, on_lost
        self.held: set[Lease] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def hold(self, lease: Lease) -> None:
        with self._lock:
            self.held.add(lease)

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self.held.discard(lease)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception:  # a missed beat is survivable; the next one may get through
                log.exception("lease heartbeat failed")

    def renew(self) -> list[Lease]:
        """Extend every held lease; returns those found lost (and drops them)."""
        with self._lock:
            held = sorted(self.held, key=lambda lease: (lease.job_id, lease.seq))
        if not held:
            return []
        if not self.healthy():
            log.error("the engine makes no progress: leases of %d chunk(s) not renewed",
                      len(held))
            return []
        lost = []
        with db.session(self.db_url) as session, session.begin():
            expires = db.clock(session) + timedelta(seconds=self.ttl)
            for lease in held:  # in key order, as end_abandoned locks them
                renewed = cast(CursorResult[Any], session.execute(
                    _RENEW, {**lease.bound(), "expires": expires})).rowcount
                if not renewed:
                    lost.append(lease)
        with self._lock:  # a chunk that finished meanwhile dropped its lease: not lost
            lost = [lease for lease in lost if lease in self.held]
        for lease in lost:
            log.warning("lost the lease on chunk %s (another worker took it, or it ended): "
                        "its requests are aborted", lease.tag)
            self.drop(lease)
            self.on_lost(lease)
        return lost
