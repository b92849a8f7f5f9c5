"""The fault suite's stage: its own Redis and PostgreSQL, the schema, a fleet of workers,
jobs submitted through the CLI, a monitor that watches a job's chunks, and the verdict
on a job once it ended (nothing lost, nothing duplicated, counters exact, no stale owner
in the ledger, no worker hung).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import redis
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from bench.chaos.fleet import NIGHTSHIFT, Fleet, Options, Worker
from bench.chaos.servers import PostgresCluster, RedisServer
from schemas import db
from schemas.tables import (
    Attempt,
    Chunk,
    ChunkStatus,
    Item,
    ItemStatus,
    Job,
    JobCount,
    JobState,
    Result,
)


@dataclass
class Verdict:
    """What a job's end looks like in SQL, and what the fleet looks like after it."""

    items: int
    state: str
    lost: int  # items without a final status and a result
    duplicated: int  # result rows beyond one per item
    miscounted: int  # items job_counts counts differently from a recount
    stale: int  # ledger or result rows of an owner that had lost the item's chunk
    hung: list[str] = field(default_factory=list)  # workers neither serving nor exited

    @property
    def problems(self) -> list[str]:
        found = [f"{name} {n}" for name, n in (("lost", self.lost), ("duplicated",
                 self.duplicated), ("miscounted", self.miscounted), ("stale", self.stale)) if n]
        if self.state != JobState.COMPLETED:
            found.append(f"job {self.state}")
        return found + [f"hung: {w}" for w in self.hung]


class JobEnded(Exception):
    """The job ended before the moment a fault was waiting for came."""


class Monitor:
    """Watches one job's chunks a few times a second: when each was first seen done, and
    the lease owners each was seen with. Survives the database going away for a while."""

    def __init__(self, db_url: str, job_id: str, every: float = 0.25) -> None:
        self.db_url, self.job_id, self.every = db_url, job_id, every
        self.done_at: dict[int, float] = {}
        self.owners: dict[int, list[tuple[str, int]]] = {}
        self.completed_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-monitor")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._look()
            except Exception:  # the database is being restarted: look again later
                db.engine_for(self.db_url).dispose()

    def _look(self) -> None:
        with db.session(self.db_url) as session:
            rows = session.execute(select(Chunk.seq, Chunk.status, Chunk.lease_owner,
                                          Chunk.deliveries)
                                   .where(Chunk.job_id == self.job_id)).all()
            state = session.scalar(select(Job.state).where(Job.id == self.job_id))
        now = time.monotonic()
        for seq, status, owner, deliveries in rows:
            if status == ChunkStatus.DONE:
                self.done_at.setdefault(seq, now)
            elif owner and (owner, deliveries) not in self.owners.setdefault(seq, []):
                self.owners[seq].append((owner, deliveries))
        if state == JobState.COMPLETED and self.completed_at is None:
            self.completed_at = now

    def all_done_at(self, seqs: set[int]) -> float | None:
        """When the last of `seqs` was first seen done (None: not all are)."""
        times = [self.done_at.get(s) for s in seqs]
        return None if None in times else max(times, default=None)  # type: ignore[type-var]


class Harness:
    """Servers, schema and fleet for a run of scenarios; a context manager that stops
    everything it started and removes its directory (kept with `keep`)."""

    def __init__(self, options: Options, *, workdir: Path | None = None, keep: bool = False
                 ) -> None:
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="nightshift-chaos-"))
        self.keep = keep
        self.redis = RedisServer(self.dir)
        self.postgres = PostgresCluster(self.dir)
        self.options = options
        self.fleet: Fleet | None = None
        self._jobs = 0

    @property
    def db_url(self) -> str:
        return self.postgres.url

    @property
    def broker_url(self) -> str:
        return self.redis.url

    def env(self) -> dict[str, str]:
        return {**os.environ, "NIGHTSHIFT_DATABASE_URL": self.db_url,
                "NIGHTSHIFT_BROKER_URL": self.broker_url}

    def __enter__(self) -> Harness:
        try:
            self.redis.start()
            self.postgres.init()
            self.cli("db", "upgrade")
            if self.options.stall_seconds is not None and not stall_option_exists():
                self.options.stall_seconds = None
            self.fleet = Fleet(self.dir, self.env(), self.options)
            self.fleet.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                 ) -> None:
        self.close()

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        db.engine_for(self.db_url).dispose()
        self.postgres.stop()
        self.redis.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def workers(self) -> list[Worker]:
        assert self.fleet is not None
        return self.fleet.workers

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([NIGHTSHIFT, *args], env=self.env(), cwd=self.dir,
                              capture_output=True, text=True, timeout=300)
        if check and done.returncode != 0:
            raise RuntimeError(f"nightshift {' '.join(args)} exited {done.returncode}: "
                               f"{done.stderr.strip()}")
        return done

    def write_input(self, rows: list[dict[str, Any]]) -> Path:
        self._jobs += 1
        path = self.dir / f"input-{self._jobs}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    def submit(self, rows: list[dict[str, Any]], *options: str) -> str:
        done = self.cli("submit", str(self.write_input(rows)), "--json", *options)
        return str(json.loads(done.stdout)["job_id"])

    # What the job is doing, read from SQL directly (a CLI process a second costs a core).

    def final_items(self, job_id: str) -> int:
        with db.session(self.db_url) as session:
            return int(session.scalar(select(func.count()).select_from(Result)
                                      .where(Result.job_id == job_id)) or 0)

    def leased_by(self, job_id: str, owner: str) -> dict[int, int]:
        """The chunks of the job `owner` holds now: seq -> delivery number."""
        with db.session(self.db_url) as session:
            rows = session.execute(select(Chunk.seq, Chunk.deliveries).where(
                Chunk.job_id == job_id, Chunk.status == ChunkStatus.LEASED,
                Chunk.lease_owner == owner)).all()
        return dict(rows)  # type: ignore[arg-type]

    def lease_owners(self, job_id: str) -> set[str]:
        """Who holds the job's chunks now."""
        with db.session(self.db_url) as session:
            return set(session.scalars(select(Chunk.lease_owner).where(
                Chunk.job_id == job_id, Chunk.status == ChunkStatus.LEASED)))

    def open_chunks(self, job_id: str) -> set[int]:
        with db.session(self.db_url) as session:
            return set(session.scalars(select(Chunk.seq).where(Chunk.job_id == job_id,
                                                               Chunk.status != ChunkStatus.DONE)))

    def state(self, job_id: str) -> str:
        with db.session(self.db_url) as session:
            return str(session.scalar(select(Job.state).where(Job.id == job_id)))

    def wait_for(self, what: str, ready: Any, timeout: float, every: float = 0.2) -> Any:
        """Polls `ready()` until it is truthy, supervising the fleet meanwhile (a worker
        that exited is started again); a database being restarted reads as "not yet",
        anything else `ready()` raises ends the wait."""
        assert self.fleet is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.fleet.supervise()
            try:
                value = ready()
            except SQLAlchemyError:
                db.engine_for(self.db_url).dispose()
                value = None
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"{what}: not within {timeout:.0f}s")

    def wait_completed(self, job_id: str, timeout: float) -> bool:
        try:
            self.wait_for(f"job {job_id} completed",
                          lambda: self.state(job_id) in JobState.FINAL, timeout, every=0.5)
        except TimeoutError:
            return False
        return True

    def verdict(self, job_id: str, stale_owners: dict[int, set[str]] | None = None) -> Verdict:
        """The job's end in SQL. `stale_owners`: per chunk, owners that lost it; none of
        their answers may be in the results or the ledger."""
        with db.session(self.db_url) as session:
            job = session.get_one(Job, job_id)
            statuses = Counter(dict(session.execute(select(Item.status, func.count()).where(
                Item.job_id == job_id).group_by(Item.status)).all()))
            counted = Counter({st: n for st, n in session.execute(select(
                JobCount.status, JobCount.items).where(JobCount.job_id == job_id)) if n})
            results = session.execute(select(Result.item_seq, Result.worker)
                                      .where(Result.job_id == job_id)).all()
            ledger = session.execute(select(Attempt.item_seq, Attempt.worker)
                                     .where(Attempt.job_id == job_id)).all()
            chunk_of = dict(session.execute(select(Item.seq, Item.chunk)
                                            .where(Item.job_id == job_id)).all())
            unfinished = set(session.scalars(select(Item.seq).where(
                Item.job_id == job_id,
                Item.status.not_in((ItemStatus.SUCCEEDED, ItemStatus.FAILED)))))
        answered = {seq for seq, _ in results}
        writer = dict(results)
        stale_owners = stale_owners or {}
        stale = sum(1 for seq, w in [*results, *ledger]
                    if w in stale_owners.get(chunk_of.get(seq, -1), ()))
        # One writer's story per item: every attempt in its ledger is by its result's writer.
        stale += sum(1 for seq, w in ledger if seq in writer and w != writer[seq])
        return Verdict(
            items=job.total, state=job.state,
            lost=len((set(chunk_of) - answered) | unfinished),
            duplicated=len(results) - len(answered),
            miscounted=sum(((statuses - counted) + (counted - statuses)).values()),
            stale=stale, hung=self.hung_workers())

    def log_tails(self, chars: int = 2500) -> str:
        """The end of each worker's latest log, for a failure's message."""
        return "\n".join(f"--- {w.log.name}\n{w.log.read_text(errors='replace')[-chars:]}"
                         for w in self.workers if w.log.exists())

    def hung_workers(self, grace: float = 30.0) -> list[str]:
        """Workers that, for `grace` seconds, are neither exited (their code recorded),
        starting, nor serving: a stopped process, or a ready one whose Celery consumer
        answers no ping. A worker that lost its broker answers none while it shuts down."""
        app = Celery("chaos-ping", broker=self.broker_url, set_as_current=False)
        answered: set[str] = set()  # a worker busy writing may miss one ping
        deadline = time.monotonic() + grace
        while True:
            # A worker started again and still loading its engine is neither.
            alive = [w for w in self.workers if w.reap() is None and w.ready()]
            stopped = [w.name for w in alive if _stopped(w.pid)]
            answered |= {name for reply in _ping(app) for name in reply}
            silent = [w.name for w in alive if w.name not in stopped
                      and not any(n.startswith(f"{w.name}-{w.pid}-") for n in answered)]
            if not stopped + silent or time.monotonic() >= deadline:
                return stopped + silent

    def describe(self, job_id: str) -> str:
        """The job's chunks by status and owner, and the fleet: for a failure's message."""
        try:
            with db.session(self.db_url) as session:
                chunks = str(dict(Counter(tuple(row) for row in session.execute(
                    select(Chunk.status, Chunk.lease_owner).where(Chunk.job_id == job_id)))))
        except SQLAlchemyError as exc:
            chunks = f"unreadable: {str(exc).splitlines()[0]}"
        fleet = [f"{w.name} (start {w.starts}, exits {w.exits}, "
                 f"{'ready' if w.alive() and w.ready() else 'alive' if w.alive() else 'exited'})"
                 for w in self.workers]
        return f"chunks {chunks}; workers " + ", ".join(fleet)


def _stopped(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    except psutil.NoSuchProcess:  # it exited a moment ago: its code is read next time
        return False


def _ping(app: Celery) -> list[dict[str, Any]]:
    """Every worker's answer to a ping, on a connection of its own (a restarted Redis
    closed the pooled ones)."""
    try:
        with app.connection_for_write() as conn:
            return app.control.ping(timeout=3.0, connection=conn) or []
    except (OSError, redis.RedisError):
        return []


def stall_option_exists() -> bool:
    """Whether `nightshift worker` has `--stall-seconds` (a stalled engine is detected)."""
    done = subprocess.run([NIGHTSHIFT, "worker", "--help"], capture_output=True, text=True)
    return "--stall-seconds" in done.stdout


__all__ = ["Harness", "JobEnded", "Monitor", "Options", "Verdict"]
