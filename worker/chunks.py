"""Run one chunk: lease it, generate its items, write every outcome in bulk.

A chunk runs all its items as one batch. If workers died holding it twice, one of
its items may be the cause: from its third delivery on (`leases.ISOLATE_FROM_DELIVERY`)
it runs in isolation, one item at a time, counting each item's deaths in SQL before it
starts. An item that was in flight when workers died `leases.MAX_ITEM_DEATHS` times is a
poison item: it fails with that reason, and its neighbours still run. (One death is
usually not the item's fault: a deploy, an OOM kill, a lost machine; its chunk simply runs
again as a batch.)
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.orm import Session

from quality import checks
from quality.semantic import Embedder
from schemas import db, dedup
from schemas.db import counters
from schemas.db.bulk import replace_rows, update_among, upsert_rows
from schemas.spec import JobSpec
from schemas.tables import (
    Attempt,
    Chunk,
    Item,
    ItemStatus,
    Job,
    JobCount,
    JobState,
    Piece,
    Result,
    utcnow,
)
from worker import broker, leases, metrics
from worker.attempts import Outcome
from worker.broker import message_priority
from worker.engine import Aborted, EngineHost
from worker.generate import run_items
from worker.prompts import encode_many

log = logging.getLogger(__name__)

# A chunk's write sends these every time: built once (built anew, 0.2 ms more a write).
_LOCK_JOB = select(Job.id).where(Job.id == bindparam("job_id")).with_for_update()
# The job's open items by its counters (schemas.db.counters), current within the write's
# transaction: counting the items themselves would cost every chunk of a big job a pass
# over its index.
_OPEN_ITEMS = select(func.coalesce(func.sum(JobCount.items), 0)).where(
    JobCount.job_id == bindparam("job_id"),
    JobCount.status.in_((ItemStatus.PENDING, ItemStatus.RUNNING)))


@dataclass
class Runtime:
    """What a worker process holds for its whole life: one engine, where to write, who it is."""

    host: EngineHost
    db_url: str
    owner: str
    # Holds this worker's leases; its `ttl` is the lease length.
    heartbeat: leases.Heartbeat
    # The relevance check's embedding model, loaded on first use.
    embedder: Embedder = field(default_factory=Embedder)
    # Where a finished chunk sends its job's next one (none: the window does not move).
    broker_url: str | None = None


def run_chunk(rt: Runtime, job_id: str, seq: int) -> str:
    """Returns what happened, for the log: "done", "isolated", "skipped", "cancelled",
    "lost" (another worker holds the chunk now: nothing of this run was written)."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    lease = leases.claim(rt.db_url, job_id, seq, rt.owner, rt.heartbeat.ttl)
    if lease is None:
        return "skipped"  # leased by a live worker, or done: a duplicate message
    rt.heartbeat.hold(lease)
    try:
        with db.reader(rt.db_url) as session:
            spec, items = _load(session, job_id, seq)
        if spec is None:
            _finish_cancelled(rt.db_url, lease)
            return "cancelled"
        if lease.deliveries >= leases.ISOLATE_FROM_DELIVERY:
            return _isolated(rt, lease, spec, items)
        timings = {"claim+load": time.perf_counter() - started}
        outcomes = run_items(rt.host, spec, [(s, k, p) for s, k, p, _, _ in items], lease.tag,
                             embedder=rt.embedder, timings=timings, earlier=_earlier(items))
        wrote = time.perf_counter()
        write(rt.db_url, lease, outcomes, broker_url=rt.broker_url)
        timings["write"] = time.perf_counter() - wrote
        _log_overhead(lease.tag, len(items), timings, time.thread_time() - cpu_started)
        return "done"
    except (leases.LeaseLost, Aborted) as exc:
        log.warning("%s: nothing of this run is written", exc)
        return "lost"
    except BaseException:
        _hand_back(rt, lease)
        raise
    finally:
        rt.heartbeat.drop(lease)


def _isolated(rt: Runtime, lease: leases.Lease, spec: JobSpec, items: list[Any]) -> str:
    """One item at a time, each with the engine to itself: if the worker dies now, the
    item in the engine is the only one that could have killed it, and that death counts."""
    for item_seq, key, payload, deaths, attempted in items:
        if deaths >= leases.MAX_ITEM_DEATHS:
            outcome = Outcome(item_seq, ItemStatus.FAILED, error=(
                f"poison item: a worker died while running it {deaths} times"))
        else:
            with rt.host.solo(lease.tag):
                _count_death(rt.db_url, lease, item_seq)
                outcome = run_items(rt.host, spec, [(item_seq, key, payload)], lease.tag,
                                    embedder=rt.embedder, earlier={item_seq: attempted})[0]
        write(rt.db_url, lease, [outcome], last=False)
    write(rt.db_url, lease, [], broker_url=rt.broker_url)
    return "isolated"


def _hand_back(rt: Runtime, lease: leases.Lease) -> None:
    """Release the chunk and send it again at once, at its job's priority: its message
    was taken, and waiting for reconcile would put it behind the whole queue."""
    try:
        if not leases.release(rt.db_url, lease) or not rt.broker_url:
            return
        with db.reader(rt.db_url) as session:
            model, priority = session.execute(select(Job.model, Job.priority)
                                              .where(Job.id == lease.job_id)).one()
        broker.enqueue(rt.broker_url, model, lease.job_id, [lease.seq],
                       priority=message_priority(priority))
    except Exception as exc:  # the lease runs out and reconcile finds the chunk instead
        log.warning("could not hand chunk %s back at once: %s", lease.tag, exc)


def rehearse(rt: Runtime) -> None:
    """A chunk's way through the database (claim, load, write) and its prompts' rendering,
    once, on a job made up for it in a transaction that is rolled back: nothing is kept.

    A worker's slots take their first chunks at once, and each compiled the same ten
    statements and the chat template for itself: a first claim+load took 20 to 24 ms
    where a warm one takes 7 to 10, a first chunk's prompts (64) 21 ms where later ones
    take 5 to 7. A database the worker cannot write to shows at start-up too."""
    job_id, payload = uuid.uuid4().hex, {"messages": [{"role": "user", "content": "Hi"}]}
    spec = JobSpec()
    with db.session(rt.db_url) as session, session.begin() as rehearsal:
        session.add(Job(id=job_id, kind=spec.kind, model=spec.model, total=1, chunks=1,
                        spec=spec.model_dump(mode="json")))
        session.flush()  # the job first: its chunk's foreign key
        session.add(Chunk(job_id=job_id, seq=0, size=1))
        session.add(Item(job_id=job_id, seq=0, key="0", chunk=0, payload=payload))
        session.flush()
        counters.add(session.connection(), job_id, ItemStatus.PENDING, 1)
        lease = leases.take(session, job_id, 0, rt.owner, rt.heartbeat.ttl)
        assert lease is not None
        _load(session, job_id, 0)
        encode_many(rt.host.tokenizer, spec, [payload])
        _store(session.connection(), lease, [Outcome(0, ItemStatus.SUCCEEDED, output="")],
               last=True, moves=True)
        rehearsal.rollback()


def _log_overhead(tag: str, items: int, timings: dict[str, float], cpu: float) -> None:
    """The chunk thread's time outside the engine (`bench.run` sums these lines), and the
    CPU time it used: the thread only waits while the engine answers, so that is its CPU
    outside the engine too. Where the engine computes on the same cores (vLLM on CPU),
    the two differ by the time the thread waited for a core."""
    parts = ", ".join(f"{k} {v * 1000:.1f}" for k, v in timings.items())
    log.info("chunk %s: %d items, outside the engine %.1f ms (%s), CPU %.1f ms", tag, items,
             sum(timings.values()) * 1000, parts, cpu * 1000)


def _load(session: Session, job_id: str, seq: int) -> tuple[JobSpec | None, list[Any]]:
    job = session.get(Job, job_id)
    if job is None or job.state == JobState.CANCELLED:
        return None, []
    items = session.execute(
        select(Item.seq, Item.key, Item.payload, Item.deaths, Item.attempted)
        .where(Item.job_id == job_id, Item.chunk == seq, Item.same_as.is_(None),
               Item.status.in_((ItemStatus.PENDING, ItemStatus.RUNNING)))
        .order_by(Item.seq)
    ).all()
    return checks.validate_spec(JobSpec.model_validate(job.spec)), list(items)


def _earlier(items: list[Any]) -> dict[int, int]:
    """The attempts earlier runs made, for the items `nightshift retry` runs again."""
    return {seq: attempted for seq, _, _, _, attempted in items if attempted}


def _count_death(db_url: str, lease: leases.Lease, item_seq: int) -> None:
    """Counted before the item runs: if the worker dies running it, the count stays."""
    with db.session(db_url) as session, session.begin():
        leases.fence(session, lease, done=False)
        session.execute(update(Item).where(Item.job_id == lease.job_id, Item.seq == item_seq)
                   .values(deaths=Item.deaths + 1))


def write(db_url: str, lease: leases.Lease, outcomes: list[Outcome], *, last: bool = True,
          broker_url: str | None = None) -> None:
    """Results upserted (one row per item however often it ran) and item statuses, in one
    transaction; with `last`, the chunk is done, the job completes if nothing is open, and
    (given a broker) the job's next chunk is sent: its window moves on. Raises LeaseLost,
    having changed nothing, when `lease` no longer holds the chunk."""
    # A connection, not a session: a session's set-up and commit cost 0.15 ms more a chunk.
    with db.engine_for(db_url).begin() as conn:
        following = _store(conn, lease, outcomes, last=last, moves=broker_url is not None)
    db.checkpoint_soon(db_url)
    if following is not None and broker_url:
        model, next_seq, priority = following
        broker.enqueue(broker_url, model, lease.job_id, [next_seq],
                       priority=message_priority(priority))
    metrics.observe(outcomes)  # once written: every path (batch, isolated, poison) ends here


def _store(conn: Connection, lease: leases.Lease, outcomes: list[Outcome], *, last: bool,
           moves: bool) -> tuple[str, int, int] | None:
    """`write` within the caller's transaction; the job's next chunk to send, if it `moves`."""
    job_id = lease.job_id
    # Chunks of one job finish one at a time, so the last one sees every other's items
    # final and marks the job completed (PostgreSQL; SQLite already serializes writers).
    conn.execute(_LOCK_JOB, {"job_id": job_id})
    leases.fence(conn, lease, done=last)
    if outcomes:
        _record(conn, job_id, lease.owner, outcomes)
    if not last:
        return None
    _maybe_complete(conn, job_id)
    return broker.next_chunk(conn, job_id) if moves else None


def _record(conn: Connection, job_id: str, owner: str, outcomes: list[Outcome]) -> None:
    # Replaced whole: write() holds the job's row lock, so no one races on these keys
    # (schemas.db.bulk.replace_rows: COPY on PostgreSQL, executemany on SQLite).
    replace_rows(conn, Result.__table__, ["job_id", "item_seq"], outcomes,
                 shared={"job_id": job_id, "worker": owner})
    ledger = [t.ledger_row(job_id, o.item_seq, owner) for o in outcomes for t in o.tries]
    if ledger:
        upsert_rows(conn, Attempt.__table__, ["job_id", "item_seq", "piece", "attempt"], ledger)
    parts = [{"job_id": job_id, "item_seq": o.item_seq, **p} for o in outcomes for p in o.parts]
    if parts:
        upsert_rows(conn, Piece.__table__, ["job_id", "item_seq", "piece"], parts)
    # Identical requests wait for these results (schemas.dedup).
    dedup.share_results(conn, job_id, [o.item_seq for o in outcomes])
    counters.add_many(conn, job_id, _finish(conn, job_id, outcomes))


def _finish(conn: Connection, job_id: str, outcomes: list[Outcome]
            ) -> dict[str, tuple[int, int, int]]:
    """The items' final statuses. What the write changes, it counts (schemas.db.counters):
    the results it inserted, and the running items it finished (their `writes` moved).
    An item no longer running (its lease was lost meanwhile, say) is counted by the
    triggers. Returns the counts by status: (items, prompt tokens, completion tokens)."""
    counts: dict[str, list[int]] = {}
    seqs: dict[str, list[int]] = {}
    for o in outcomes:
        counted = counts.setdefault(o.status, [0, 0, 0])
        counted[1] += o.prompt_tokens
        counted[2] += o.completion_tokens
        seqs.setdefault(o.status, []).append(o.item_seq)
    items = Item.__table__
    for status, among in seqs.items():
        finished = update_among(conn, items, {"status": status},
                                {"job_id": job_id, "status": ItemStatus.RUNNING}, "seq", among,
                                increment=["writes"])
        counts[status][0] += finished
        counts.setdefault(ItemStatus.RUNNING, [0, 0, 0])[0] -= finished
        if finished < len(among):
            update_among(conn, items, {"status": status}, {"job_id": job_id}, "seq", among)
    return {status: (n, prompt, completion) for status, (n, prompt, completion) in counts.items()}


def _finish_cancelled(db_url: str, lease: leases.Lease) -> None:
    with db.session(db_url) as session, session.begin():
        leases.fence(session, lease, done=True)
        session.execute(update(Item).where(Item.job_id == lease.job_id, Item.chunk == lease.seq,
                                      Item.status.in_((ItemStatus.PENDING, ItemStatus.RUNNING)))
                   .values(status=ItemStatus.CANCELLED))


def _maybe_complete(conn: Connection, job_id: str) -> None:
    if conn.execute(_OPEN_ITEMS, {"job_id": job_id}).scalar() == 0:
        conn.execute(update(Job).where(Job.id == job_id, Job.state.in_(
            (JobState.QUEUED, JobState.RUNNING))).values(state=JobState.COMPLETED,
                                                         finished_at=utcnow()))
