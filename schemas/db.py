"""Engines and sessions for SQLite (the default) and PostgreSQL, from one URL."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from schemas.errors import ConfigError, DatabaseUnreachable
from schemas.settings import redact

MIGRATIONS = Path(__file__).parent / "migrations"


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
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(f"database URL {redact(url)!r}: driver missing ({exc})") from None
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun explicitly (BEGIN IMMEDIATE)
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session(url: str) -> Session:
    return sessionmaker(engine_for(url), expire_on_commit=False)()


def check_reachable(url: str) -> None:
    """Fail with one line naming the URL, not a driver traceback."""
    try:
        with engine_for(url).connect():
            pass
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "unreachable"
        raise DatabaseUnreachable(f"cannot reach the database at {redact(url)}: {reason}") from None


def upgrade(url: str, revision: str = "head") -> None:
    """Create or migrate the schema with Alembic."""
    check_reachable(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine_for(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def upsert(table: Any, dialect: str, keys: list[str]) -> Any:
    """An INSERT that replaces the row with the same key: exactly one row per key."""
    if dialect not in ("postgresql", "sqlite"):
        return insert(table)
    stmt = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    return stmt.on_conflict_do_update(index_elements=keys, set_=updates)
