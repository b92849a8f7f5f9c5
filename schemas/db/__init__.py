"""The database machinery: engines and sessions for SQLite (the default) and PostgreSQL,
from one URL, the database's clock, and the schema's migrations. Bulk statements are in
`schemas.db.bulk`, the per-job counters and their triggers in `schemas.db.counters`."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from schemas.db import counters
from schemas.errors import ConfigError, DatabaseUnreachable, first_line
from schemas.settings import redact

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent.parent / "migrations"
# An execution option: this connection's transactions only read (`reader`).
_READ_ONLY = "nightshift_read_only"


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One pooled engine per URL and process."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database URL {redact(url)!r} is not a valid SQLAlchemy URL") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        if parsed.get_backend_name() == "sqlite":
            # Several workers write at once: WAL lets readers through, the timeout queues writers.
            engine = create_engine(parsed, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(f"database URL {redact(url)!r}: driver missing ({exc})") from None
    return engine


def _sqlite_begin(conn: Connection) -> None:
    """A writer takes SQLite's write lock as it begins: two deferred writers that both read
    first would deadlock on upgrading their locks. A reader (`reader`) begins deferred and
    takes no write lock: in WAL mode its snapshot never holds up a writer."""
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY)
                         else "BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun explicitly (_sqlite_begin)
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class _Checkpointer(threading.Thread):
    """Copies SQLite's WAL back into the database file on its own connection and thread.

    SQLite does this (a checkpoint: the copy and two fsyncs) inside the commit that
    takes the WAL past 1,000 pages, that is, every four or five chunks of results, on the
    writer's time. Nudged after each bulk commit, this thread does it while the writer
    goes back to its engine, PASSIVE (it never waits for readers or writers, and skips a
    turn if another process is checkpointing); the commits' own checkpoint stays as the
    backstop when it falls behind. It leaves after a minute without commits."""

    IDLE_S = 60.0

    def __init__(self, url: str) -> None:
        super().__init__(name="sqlite-checkpoint", daemon=True)
        self.url = url
        self.due = threading.Event()
        self.leaving = False

    def run(self) -> None:
        conn = engine_for(self.url).raw_connection()
        try:
            while self.due.wait(self.IDLE_S) or not self._leave():
                self.due.clear()
                try:
                    conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()
                except Exception as exc:  # the commits still checkpoint: a line, no more
                    log.warning("background checkpoint of %s failed: %s",
                                redact(self.url), exc)
        finally:
            conn.close()

    def _leave(self) -> bool:
        with _checkpointing:
            self.leaving = not self.due.is_set()
            return self.leaving


_checkpointers: dict[str, _Checkpointer] = {}
_checkpointing = threading.Lock()


def checkpoint_soon(url: str) -> None:
    """After a bulk commit: have SQLite's checkpoint done off the writer's time (writing
    chunks of 1,000 results spent about 15 % of its time on it, bench.dataplane). Other
    databases checkpoint on their own."""
    engine = engine_for(url)
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return
    with _checkpointing:
        worker = _checkpointers.get(url)
        if worker is None or worker.leaving or not worker.is_alive():
            worker = _checkpointers[url] = _Checkpointer(url)
            worker.start()
        worker.due.set()


def session(url: str) -> Session:
    """A session that writes: on SQLite each transaction holds the write lock from its
    start to its end, so keep them short (and use `reader` for what only reads)."""
    return sessionmaker(engine_for(url), expire_on_commit=False)()


def reader(url: str) -> Session:
    """A session that only reads (status, watch, results, report): on SQLite it takes no
    write lock, so an export streamed into a slow pipe never holds up workers' writes or
    heartbeats. On PostgreSQL it is a session like any other."""
    return sessionmaker(_reading(url), expire_on_commit=False)()


@lru_cache(maxsize=8)
def _reading(url: str) -> Engine:
    """`engine_for(url)` (its pool and listeners) with its transactions marked as reads."""
    return engine_for(url).execution_options(**{_READ_ONLY: True})


def check_reachable(url: str) -> None:
    """Fail with one line naming the URL, not a driver traceback."""
    try:
        with engine_for(url).connect():
            pass
    except OperationalError as exc:
        raise DatabaseUnreachable(
            f"cannot reach the database at {redact(url)}: {first_line(exc)}") from None


def clock(session: Session | Connection) -> datetime:
    """The database's own time, in UTC: leases are reckoned by it, not by each worker's
    clock. SQLite runs inside this process, so there the database's clock is this host's."""
    dialect = session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    if dialect.name != "postgresql":
        return datetime.now(UTC)
    now: datetime = session.execute(text("SELECT statement_timestamp()")).scalar_one()
    return now.astimezone(UTC)


def upgrade(url: str, *, revision: str = "head") -> None:
    """Create or migrate the schema with Alembic (imported here: a second of start-up
    that commands which only read, like `status`, should not pay)."""
    from alembic import command
    from alembic.config import Config

    check_reachable(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine_for(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        if revision == "head":
            counters.ensure(conn)

