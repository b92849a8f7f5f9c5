"""Bulk statements: a submit's million items and a chunk's results in a few statements,
with no ORM and no per-value type processing, as SQLite and PostgreSQL each do them
fastest (COPY on PostgreSQL; one prepared statement executed many times on SQLite)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any

import msgspec
from sqlalchemy import JSON, Connection, Integer
from sqlalchemy.exc import IntegrityError

_json = msgspec.json.Encoder().encode


def insert_rows(conn: Connection, table: Any, columns: Sequence[str],
                rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows already in their stored form (JSON as text), inserted in bulk: COPY on
    PostgreSQL, one prepared INSERT executed many times elsewhere. No ORM, no per-value
    type processing: this is what makes a million-row submit take seconds."""
    if not rows:
        return
    names = ", ".join(map(conn.dialect.identifier_preparer.quote, columns))
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES "
                             f"({', '.join([_mark(conn)] * len(columns))})", list(rows))
        return
    statement = f"COPY {table.name} ({names}) FROM STDIN"
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except cursor.connection.IntegrityError as exc:  # as SQLAlchemy reports it elsewhere
        raise IntegrityError(statement, None, exc) from exc
    finally:
        cursor.close()


def upsert_rows(conn: Connection, table: Any, keys: Sequence[str],
                rows: Sequence[dict[str, Any]]) -> None:
    """One row per key, replaced if it is there, for a whole batch at once. PostgreSQL
    gets one statement over the batch sent as one JSON document (json_populate_recordset:
    no per-value adaptation in Python); SQLite one prepared statement executed many
    times. Columns the rows leave out take their Python-side default, once per batch."""
    if not rows:
        return
    q = conn.dialect.identifier_preparer.quote
    given = [c.name for c in table.columns if c.name in rows[0]]
    filled = _defaults(conn, table, rows[0])
    columns = ", ".join(map(q, given + [name for name, _ in filled]))
    updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in given + [n for n, _ in filled]
                        if c not in keys)
    conflict = f"ON CONFLICT ({', '.join(map(q, keys))}) DO UPDATE SET {updates}"
    head = f"INSERT INTO {table.name} ({columns}) "
    if conn.dialect.name == "postgresql":
        picked = ", ".join([f"d.{q(c)}" for c in given] + ["%s"] * len(filled))
        conn.exec_driver_sql(head + f"SELECT {picked} FROM {_recordset(table)} {conflict}",
                             (*[value for _, value in filled], _json(rows).decode()))
        return
    nulls = _all_none(rows, given)  # written as literal NULLs
    marks = ", ".join(["NULL" if c in nulls else "?" for c in given] + ["?"] * len(filled))
    conn.exec_driver_sql(head + f"VALUES ({marks}) {conflict}",
                         _tuples(conn, table, [c for c in given if c not in nulls], rows,
                                 tail=[value for _, value in filled]))


def replace_rows(conn: Connection, table: Any, keys: Sequence[str], rows: Sequence[Any], *,
                 shared: dict[str, Any] | None = None) -> None:
    """Each row replaced whole (one row per key), for a writer that no one else races on
    the same keys (worker.chunks.write holds its job's row lock): the batch's keys are
    deleted, one statement per run of equal leading keys, and the rows inserted in bulk.
    No upsert: on PostgreSQL no JSON document to parse (half the server's time of
    `upsert_rows`), and every row is an insert, which its writer counts
    (schemas.db.counters). `rows` are dicts or objects with the columns as attributes (a
    chunk's outcomes: no dict a row); `shared` holds the values the same in every row."""
    if not rows:
        return
    shared = shared or {}
    *lead, last = keys
    if all(k in shared for k in lead):  # one run: a chunk's results under its job
        runs = {tuple(shared[k] for k in lead): _column(rows, last)}
    else:
        runs = {}
        for values, key in zip(_tuples(conn, table, lead, rows, shared=shared),
                               _column(rows, last), strict=True):
            runs.setdefault(values, []).append(key)
    where = "".join(f"{conn.dialect.identifier_preparer.quote(k)} = {_mark(conn)} AND "
                    for k in lead)
    for values, lasts in runs.items():
        among, listed = _among(conn, table, last, lasts)
        conn.exec_driver_sql(f"DELETE FROM {table.name} WHERE {where}{among}",
                             (*values, *listed))
    # A column None in every row is left out, NULL (see _all_none).
    picked = {c.name: _column(rows, c.name) for c in table.columns
              if c.name not in shared and _has(rows[0], c.name)}
    given = [name for name, column in picked.items()
             if column.count(None) < len(rows) or table.c[name].default is not None
             or table.c[name].server_default is not None]
    columns: list[Iterable[Any]] = [_encoded(conn, table.c[name], picked[name])
                                    for name in given]
    for name, value in shared.items():
        given.append(name)
        columns.append(repeat(_encoded(conn, table.c[name], [value])[0], len(rows)))
    for name, value in _defaults(conn, table, given,
                                 server=conn.dialect.name == "postgresql"):
        given.append(name)
        columns.append(repeat(value, len(rows)))
    insert_rows(conn, table, given, list(zip(*columns, strict=True)))


def update_among(conn: Connection, table: Any, values: dict[str, Any], where: dict[str, Any],
                 name: str, among: list[Any], *, increment: Sequence[str] = ()) -> int:
    """One UPDATE: `values` set, and one added to each column of `increment`, on the rows
    that match `where` and whose `name` is among `among`. Values as the driver takes
    them. How many rows it changed. A batch's rows that take the same values take them
    in one statement (a chunk's items: one per status, not one per item; on PostgreSQL
    2.5 ms for 1,000 items, where joining the batch as a JSON recordset took 4.8)."""
    q = conn.dialect.identifier_preparer.quote
    sets = ", ".join([f"{q(c)} = {_mark(conn)}" for c in values]
                     + [f"{q(c)} = {q(c)} + 1" for c in increment])
    matching = "".join(f"{q(c)} = {_mark(conn)} AND " for c in where)
    within, listed = _among(conn, table, name, among)
    return conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE {matching}{within}",
                                (*values.values(), *where.values(), *listed)).rowcount


def select_among(conn: Connection, table: Any, column: str, where: dict[str, Any], name: str,
                 among: list[Any]) -> list[Any]:
    """One SELECT: `column` of the rows that match `where` and whose `name` is among
    `among`, listed as `update_among` lists them."""
    q = conn.dialect.identifier_preparer.quote
    matching = "".join(f"{q(c)} = {_mark(conn)} AND " for c in where)
    within, listed = _among(conn, table, name, among)
    return list(conn.exec_driver_sql(
        f"SELECT {q(column)} FROM {table.name} WHERE {matching}{within}",
        (*where.values(), *listed)).scalars())


def _among(conn: Connection, table: Any, name: str, values: list[Any]
           ) -> tuple[str, tuple[Any, ...]]:
    """`name IN values` and its parameters. The values go as one JSON text (no per-value
    adapting). An integer key's range comes first, so that the primary key's index finds
    the rows, and alone when the values fill it (a chunk's items: a third of SQLite's
    time of a status update). A text key is ordered by its collation, not as Python
    orders it: no range."""
    q = conn.dialect.identifier_preparer.quote(name)
    mark = _mark(conn)
    if conn.dialect.name == "postgresql":
        kind = table.c[name].type.compile(dialect=conn.dialect)
        among = f"{q} IN (SELECT value::{kind} FROM json_array_elements_text({mark}))"
    else:
        among = f"{q} IN (SELECT value FROM json_each({mark}))"
    if not isinstance(table.c[name].type, Integer):
        return among, (_json(values).decode(),)
    low, high = min(values), max(values)
    within = f"{q} BETWEEN {mark} AND {mark}"
    if high - low + 1 == len(values) == len(set(values)):
        return within, (low, high)
    return f"{within} AND {among}", (low, high, _json(values).decode())


def _mark(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _recordset(table: Any) -> str:
    return f"json_populate_recordset(NULL::{table.name}, %s::json) AS d"


def _defaults(conn: Connection, table: Any, present: Collection[str], *,
              server: bool = False) -> list[tuple[str, Any]]:
    """The Python-side defaults of the columns not `present`, once for a batch; with
    `server`, a column the server fills is left to it (a COPY parses each value it is
    sent: the same timestamp a thousand times took 0.4 ms of a chunk's results)."""
    filled = []
    for column in table.columns:
        default = column.default
        if server and column.server_default is not None:
            continue
        if column.name not in present and default is not None:
            value = default.arg(None) if default.is_callable else default.arg
            encode = _encoder(conn, column)
            if encode and value is not None:
                value = encode(value)
            elif isinstance(value, datetime) and conn.dialect.name == "sqlite":
                value = value.isoformat(" ")  # as sqlite3's adapter would, once per batch
            filled.append((column.name, value))
    return filled


def _has(row: Any, name: str) -> bool:
    return name in row if isinstance(row, dict) else hasattr(row, name)


def _column(rows: Sequence[Any], name: str) -> list[Any]:
    """One column of a batch of dicts or objects, picked in C."""
    return list(map((itemgetter if isinstance(rows[0], dict) else attrgetter)(name), rows))


def _all_none(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> set[str]:
    """The columns None in every row, which are not bound: the sqlite3 module binds each
    None through an adapter lookup (a chunk's results: 5.0 ms bound, 2.1 not)."""
    return {name for name in names if rows[0][name] is None
            and _column(rows, name).count(None) == len(rows)}


def _tuples(conn: Connection, table: Any, names: Sequence[str], rows: Sequence[Any],
            *, shared: dict[str, Any] | None = None, tail: Sequence[Any] = ()
            ) -> list[tuple[Any, ...]]:
    """Value tuples as the driver takes them, column by column, picked and zipped in C:
    a batch is a thousand rows. A name in `shared` takes its value there, the same in
    every row; `tail` values end each tuple."""
    if not rows:
        return []
    shared = shared or {}
    columns: list[Iterable[Any]] = [
        repeat(_encoded(conn, table.c[name], [shared[name]])[0], len(rows))
        if name in shared else _encoded(conn, table.c[name], _column(rows, name))
        for name in names]
    return list(zip(*columns, *[repeat(value, len(rows)) for value in tail], strict=True))


def _encoded(conn: Connection, column: Any, values: list[Any]) -> list[Any]:
    """Values in their stored form: JSON encoded once, dates as SQLite keeps them."""
    encode = _encoder(conn, column)
    return [None if v is None else encode(v) for v in values] if encode else values


def _encoder(conn: Connection, column: Any) -> Any:
    if isinstance(column.type, JSON):
        return lambda value: _json(value).decode()
    return column.type.bind_processor(conn.dialect)

