"""Workers in SQL: each worker records itself at start and beats while it lives, so that
people see which workers serve which model, and a job that no worker can take says so.

The row's heartbeat is the database's clock (schemas.db.clock). A worker that stops
cleanly marks its row `stopped`; one that is killed leaves it `running`, and its
heartbeat goes stale: a worker is live while its last beat is under `LIVE` old. A beat
waits for the database at most `WAIT_S`: a missed beat is logged, and the next one tries
again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.orm import Session

from schemas import db
from schemas.errors import first_line
from schemas.tables import Worker, WorkerState

log = logging.getLogger(__name__)

# Five minutes without a beat (one every BEAT_S) is no pause of a live worker: it is gone.
LIVE = WorkerState.LIVE
BEAT_S = 5.0
# A beat queued behind a long write is not worth waiting for: the next one comes soon.
WAIT_S = 5.0
# Rows of workers not heard from for this long are deleted when a worker starts.
FORGET = timedelta(days=7)
# tokens/s is the rate of the last minute: results are written a chunk at a time.
RATE_WINDOW_S = 60.0


def generated_tokens() -> float:
    """Completion tokens of the results this process wrote (worker.metrics counts them)."""
    from worker.metrics import REGISTRY

    return REGISTRY.get_sample_value("nightshift_generated_tokens_total") or 0.0


class Presence:
    """This worker's row: registered by `start`, beaten by a thread of its own, marked
    stopped by `stop`."""

    def __init__(self, db_url: str, owner: str, model: str, slots: int, *,
                 name: str | None = None, every: float = BEAT_S,
                 tokens: Callable[[], float] = generated_tokens) -> None:
        self.db_url, self.every, self.tokens = db_url, every, tokens
        self.row = {"id": owner, "name": name or socket.gethostname(),
                    "host": socket.gethostname(), "pid": os.getpid(), "model": model,
                    "slots": slots}
        self._seen: deque[tuple[float, float]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence", daemon=True)

    def start(self) -> Presence:
        try:
            self.register()
        except Exception as exc:  # workers run without it; the beats register it later
            log.warning("could not record this worker in the database (`nightshift "
                        "workers` will not list it until a beat does): %s", first_line(exc))
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and mark the row stopped (a clean shutdown)."""
        self._stop.set()
        self._thread.join(timeout=WAIT_S + 1)
        try:
            with _bounded(self.db_url) as conn:
                conn.execute(update(Worker).where(Worker.id == self.row["id"]).values(
                    state=WorkerState.STOPPED, last_heartbeat_at=db.clock(conn),
                    tokens_per_s=0.0))
        except Exception as exc:
            log.warning("could not mark this worker stopped: %s", first_line(exc))

    def register(self) -> None:
        with _bounded(self.db_url) as conn:
            now = db.clock(conn)
            conn.execute(delete(Worker).where(Worker.last_heartbeat_at < now - FORGET))
            self._insert(conn, now)

    def beat(self) -> None:
        """Renew the heartbeat and the rate; register again if the row is gone."""
        rate = self.rate()
        with _bounded(self.db_url) as conn:
            now = db.clock(conn)
            found = conn.execute(update(Worker).where(Worker.id == self.row["id"]).values(
                state=WorkerState.RUNNING, last_heartbeat_at=now, tokens_per_s=rate)).rowcount
            if not found:
                self._insert(conn, now, rate=rate)

    def rate(self) -> float:
        """Generated tokens per second over the last RATE_WINDOW_S."""
        now, total = time.monotonic(), self.tokens()
        self._seen.append((now, total))
        while len(self._seen) > 1 and now - self._seen[1][0] >= RATE_WINDOW_S:
            self._seen.popleft()
        then, before = self._seen[0]
        return round((total - before) / (now - then), 1) if now > then else 0.0

    def _insert(self, conn: Connection, now: datetime, *, rate: float = 0.0) -> None:
        conn.execute(insert(Worker).values(**self.row, state=WorkerState.RUNNING,
                                           started_at=now, last_heartbeat_at=now,
                                           tokens_per_s=rate))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.beat()
            except Exception as exc:
                log.warning("worker heartbeat missed: %s", first_line(exc))


@contextmanager
def _bounded(db_url: str) -> Iterator[Connection]:
    """A write transaction that waits at most WAIT_S for locks (and on PostgreSQL, for the
    server): a beat is never queued for a minute behind other writers."""
    with db.engine_for(db_url).connect() as conn:
        if conn.dialect.name != "sqlite":
            with conn.begin():
                for setting in ("lock_timeout", "statement_timeout"):
                    conn.exec_driver_sql(f"SET LOCAL {setting} = '{int(WAIT_S * 1000)}ms'")
                yield conn
            return
        raw: Any = conn.connection.driver_connection
        usual = raw.execute("PRAGMA busy_timeout").fetchone()[0]
        raw.execute(f"PRAGMA busy_timeout={int(WAIT_S * 1000)}")
        try:
            with conn.begin():
                yield conn
        finally:
            raw.execute(f"PRAGMA busy_timeout={int(usual)}")




def listed(db_url: str, *, everyone: bool = False) -> list[dict[str, Any]]:
    """Live workers (or, `everyone`, all the database remembers), by model and name, each
    with its heartbeat's age in seconds by the database's clock."""
    with db.reader(db_url) as session:
        now = db.clock(session)
        query = select(Worker).order_by(Worker.model, Worker.name, Worker.started_at)
        if not everyone:
            query = _live(query, now)
        return [_shape(worker, now) for worker in session.scalars(query)]


def live_models(session: Session) -> set[str]:
    """The models at least one live worker hosts, as the workers were started with them."""
    return set(session.scalars(_live(select(Worker.model).distinct(), db.clock(session))))


def _live(query: Any, now: datetime) -> Any:
    return query.where(Worker.state == WorkerState.RUNNING,
                       Worker.last_heartbeat_at >= now - LIVE)


def _shape(worker: Worker, now: datetime) -> dict[str, Any]:
    age = (now - worker.last_heartbeat_at).total_seconds()
    state = worker.state
    if state == WorkerState.RUNNING and age > LIVE.total_seconds():
        state = "stale"  # never stopped, silent since: killed, or its host is gone
    return {"id": worker.id, "name": worker.name, "host": worker.host, "pid": worker.pid,
            "model": worker.model, "slots": worker.slots, "state": state,
            "started_at": worker.started_at.isoformat(),
            "last_heartbeat_at": worker.last_heartbeat_at.isoformat(),
            "heartbeat_age_s": round(max(age, 0.0), 1), "tokens_per_s": worker.tokens_per_s}
