"""Plain DB-API reads, for the commands that must answer at once (`nightshift status`):
SQLite and PostgreSQL through their own drivers, with no SQLAlchemy to import, which
costs such a command more than its query. Other databases go through SQLAlchemy's
connection to them, with the same SQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from schemas.errors import DatabaseUnreachable, SchemaOutdated, first_line
from schemas.settings import redact

# PostgreSQL's codes for an undefined table and an undefined column.
_MISSING = ("42P01", "42703")
# A timestamp as SQLAlchemy keeps it in SQLite (naive, UTC), for comparisons in SQL.
SQLITE_STAMP = "%Y-%m-%d %H:%M:%S.%f"


class Reader:
    """One connection, read from: rows of SQL written with `?` marks, whatever the driver."""

    def __init__(self, conn: Any, url: str, *, sqlite: bool, postgres: bool,
                 qmark: bool) -> None:
        self.conn, self.url = conn, url
        self.sqlite, self.postgres, self.qmark = sqlite, postgres, qmark

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql if self.qmark else sql.replace("?", "%s"), params)
            return list(cursor.fetchall())
        except Exception as exc:
            if not _missing(exc):
                raise
            raise SchemaOutdated(f"the database at {redact(self.url)} has no nightshift "
                                 f"tables, or older ones ({first_line(exc)}): run "
                                 "`nightshift db upgrade`") from None
        finally:
            cursor.close()

    def now(self) -> datetime:
        """The database's clock (schemas.db.clock): SQLite's is this host's."""
        if not self.postgres:
            return datetime.now(UTC)
        return when(self.rows("SELECT statement_timestamp()")[0][0])  # type: ignore[return-value]

    def stamp(self, value: datetime) -> Any:
        """`value` as a parameter compared with a stored timestamp."""
        return value.astimezone(UTC).strftime(SQLITE_STAMP) if self.sqlite else value


def when(value: Any) -> datetime | None:
    """A stored timestamp, aware and in UTC (SQLite hands back text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@contextmanager
def reader(url: str) -> Iterator[Reader]:
    """A connection that only reads; fails with one line naming the URL."""
    conn, kind = _connect(url)
    try:
        yield Reader(conn, url, sqlite=kind == "sqlite", postgres=kind == "postgresql",
                     qmark=kind == "sqlite" or getattr(conn, "paramstyle", "") == "qmark")
    finally:
        conn.close()


def _connect(url: str) -> tuple[Any, str]:
    scheme = url.split(":", 1)[0]
    try:
        if scheme == "sqlite":
            return _sqlite(url), "sqlite"
        if scheme in ("postgresql", "postgresql+psycopg"):
            import psycopg

            parts = urlsplit(url)
            return psycopg.connect(parts._replace(scheme="postgresql").geturl(),
                                   autocommit=True), "postgresql"
    except (sqlite3.Error, ImportError, OSError) as exc:
        raise DatabaseUnreachable(f"cannot reach the database at {redact(url)}: "
                                  f"{first_line(exc)}") from None
    except Exception as exc:  # psycopg's OperationalError, imported only when needed
        if type(exc).__module__.startswith("psycopg"):
            raise DatabaseUnreachable(f"cannot reach the database at {redact(url)}: "
                                      f"{first_line(exc)}") from None
        raise
    from schemas import db

    db.check_reachable(url)
    return db.engine_for(url).raw_connection(), "other"


def _sqlite(url: str) -> sqlite3.Connection:
    """SQLAlchemy's sqlite:///relative, sqlite:////absolute and sqlite:// (in memory)."""
    path = unquote(url.split("://", 1)[1].split("?", 1)[0])
    path = path[1:] if path.startswith("/") else path
    if path in ("", ":memory:"):
        return sqlite3.connect(":memory:")
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=60,
                           isolation_level=None)
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


def _missing(exc: BaseException) -> bool:
    """A table or column the query names is not in the database."""
    if isinstance(exc, sqlite3.OperationalError):
        return str(exc).startswith(("no such table", "no such column"))
    return getattr(exc, "sqlstate", None) in _MISSING
