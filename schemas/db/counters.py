"""Per-job counters kept by the database itself, so that `nightshift status` on a job of a
million items reads a few rows: table `job_counts` holds, per job and status, how many
items have it and the tokens of the results that have it.

- Updates and deletes of `items` and `results` are counted by triggers, whoever makes
  them (leases, result writes, cancel, retry, SQL by hand): on PostgreSQL once per
  statement over its transition tables, on SQLite, which has only row triggers, per row.
- Rows inserted in bulk are counted by their writer, in the inserting transaction
  (`add`): submit its items, the result write its results (on SQLite a row trigger cost
  five times submit's insert, and a fifth of a result write). Code inserting items, or
  results with tokens, elsewhere must call `add` too (schemas.dedup's copies of a result
  carry no tokens).
- The result write also counts the running items it finishes: its UPDATE adds one to
  their `writes`, and the triggers stand down for what moves `writes` (a row on SQLite,
  an eighth of the write saved; a statement on PostgreSQL). Any other change is counted.

A migration that rebuilds `items` or `results` on SQLite (Alembic batch mode) drops
their triggers: `ensure` puts them back, and `schemas.db.upgrade` calls it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, inspect, text

TRIGGERS = ("items_counted_update", "items_counted_delete",
            "results_counted_update", "results_counted_delete")
# Installed by earlier versions; inserts are counted by `add` now.
RETIRED = ("items_counted_insert", "results_counted_insert")

_UPSERT = ("INSERT INTO job_counts (job_id, status, items, prompt_tokens, completion_tokens) "
           "{rows} ON CONFLICT (job_id, status) DO UPDATE SET "
           "items = job_counts.items + excluded.items, "
           "prompt_tokens = job_counts.prompt_tokens + excluded.prompt_tokens, "
           "completion_tokens = job_counts.completion_tokens + excluded.completion_tokens")


def _sqlite_ddl(stand_down: bool) -> list[str]:
    def row(ref: str, n: str, tokens: bool) -> str:
        p, c = (f"{n}{ref}.prompt_tokens", f"{n}{ref}.completion_tokens") if tokens \
            else ("0", "0")
        items = "0" if tokens else n + "1"
        # "WHERE true" keeps SQLite's parser from reading ON CONFLICT as a join clause.
        return _UPSERT.format(rows=f"SELECT {ref}.job_id, {ref}.status, {items}, {p}, {c} "
                                   "WHERE true") + ";"

    def trigger(name: str, event: str, table: str, body: str, *, when: str = "") -> str:
        return (f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} ON {table} "
                f"{when}BEGIN {body} END")

    return [
        trigger("items_counted_update", "UPDATE OF status", "items",
                row("OLD", "-", False) + row("NEW", "", False),
                when="FOR EACH ROW WHEN OLD.status IS NOT NEW.status "
                     + ("AND OLD.writes IS NEW.writes " if stand_down else "")),
        trigger("items_counted_delete", "DELETE", "items", row("OLD", "-", False)),
        trigger("results_counted_update", "UPDATE", "results",
                row("OLD", "-", True) + row("NEW", "", True),
                when="FOR EACH ROW WHEN OLD.status IS NOT NEW.status OR OLD.prompt_tokens IS NOT "
                     "NEW.prompt_tokens OR OLD.completion_tokens IS NOT NEW.completion_tokens "),
        trigger("results_counted_delete", "DELETE", "results", row("OLD", "-", True)),
    ]


def _postgresql_ddl(stand_down: bool) -> list[str]:
    def function(name: str, tokens: bool) -> str:
        counted = ("0, sum(sign * prompt_tokens), sum(sign * completion_tokens)" if tokens
                   else "sum(sign), 0, 0")
        changed = ("sum(sign * prompt_tokens) <> 0 OR sum(sign * completion_tokens) <> 0"
                   if tokens else "sum(sign) <> 0")
        # Sorted upserts take the counter rows' locks in one order: no deadlocks.
        grouped = (f"SELECT job_id, status, {counted} FROM ({{rows}}) AS d "
                   f"GROUP BY job_id, status HAVING {changed} ORDER BY job_id, status")
        fields = "job_id, status, prompt_tokens, completion_tokens" if tokens \
            else "job_id, status"
        old = f"SELECT {fields}, -1 AS sign FROM old_rows"
        new = f"SELECT {fields}, 1 AS sign FROM new_rows"
        # A statement that moves `writes` is a result write that counted itself. Told by
        # sums, not by joining old rows to new: a join's plan, cached by the session from
        # one big update (200,000 items), made its later 1,000-item writes 15 ms slower.
        counted_itself = ("IF (SELECT sum(writes) FROM new_rows) IS DISTINCT FROM "
                          "(SELECT sum(writes) FROM old_rows) THEN RETURN NULL; END IF;"
                          if stand_down and not tokens else "")
        return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    {counted_itself}
    {_UPSERT.format(rows=grouped.format(rows=old + " UNION ALL " + new))};
  ELSE
    {_UPSERT.format(rows=grouped.format(rows=old))};
  END IF;
  RETURN NULL;
END $$"""

    def trigger(table: str, event: str, refs: str) -> str:
        return (f"CREATE OR REPLACE TRIGGER {table}_counted_{event.lower()} AFTER {event} "
                f"ON {table} REFERENCING {refs} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION {table}_counted()")

    ddl = [function("items_counted", False), function("results_counted", True)]
    for table in ("items", "results"):
        ddl += [trigger(table, "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
                trigger(table, "DELETE", "OLD TABLE AS old_rows")]
    return ddl


def add(conn: Connection, job_id: str, status: str, items: int = 0, *, prompt_tokens: int = 0,
        completion_tokens: int = 0) -> None:
    """Count rows inserted in bulk (submit's items), in the inserting transaction."""
    add_many(conn, job_id, {status: (items, prompt_tokens, completion_tokens)})


def add_many(conn: Connection, job_id: str, counts: dict[str, tuple[int, int, int]]) -> None:
    """Count (items, prompt tokens, completion tokens) by status in one statement (a
    chunk's results and the items they finished), in the changing transaction."""
    rows = sorted(counts.items())  # PostgreSQL locks the counter rows in one order
    values = ", ".join(f"(:job_id, :s{i}, :i{i}, :p{i}, :c{i})" for i in range(len(rows)))
    params: dict[str, Any] = {"job_id": job_id}
    for i, (status, (items, prompt, completion)) in enumerate(rows):
        params.update({f"s{i}": status, f"i{i}": items, f"p{i}": prompt, f"c{i}": completion})
    conn.execute(text(_UPSERT.format(rows=f"VALUES {values}")), params)


def _present(conn: Connection) -> set[str]:
    names = [*TRIGGERS, *RETIRED]
    if conn.dialect.name == "postgresql":
        query = "SELECT tgname FROM pg_trigger WHERE tgname = ANY(:names)"
        return set(conn.execute(text(query), {"names": names}).scalars())
    listed = ", ".join(f"'{name}'" for name in names)
    return set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                 f"AND name IN ({listed})")).scalars())


def ensure(conn: Connection) -> None:
    """Install the triggers if any is missing, drop retired ones (idempotent, cheap)."""
    if conn.dialect.name not in ("postgresql", "sqlite"):
        return
    present = _present(conn)
    for name in present & set(RETIRED):
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}{_on(conn, name)}")
    if present >= set(TRIGGERS):
        return
    # A database before migration 0009 has no items.writes: its triggers count every row.
    stand_down = "writes" in {c["name"] for c in inspect(conn).get_columns("items")}
    for statement in (_postgresql_ddl(stand_down) if conn.dialect.name == "postgresql"
                      else _sqlite_ddl(stand_down)):
        conn.exec_driver_sql(statement)


def drop(conn: Connection) -> None:
    for name in (*TRIGGERS, *RETIRED):
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}{_on(conn, name)}")


def reinstall(conn: Connection) -> None:
    """The triggers as this version writes them (a migration that changes them)."""
    if conn.dialect.name in ("postgresql", "sqlite"):
        drop(conn)
        ensure(conn)


def _on(conn: Connection, trigger: str) -> str:
    return f" ON {trigger.split('_', 1)[0]}" if conn.dialect.name == "postgresql" else ""


def backfill(conn: Connection) -> None:
    """Counters from the rows already there (the migration that adds the table)."""
    conn.exec_driver_sql("DELETE FROM job_counts")
    conn.exec_driver_sql(_UPSERT.format(
        rows="SELECT job_id, status, count(*), 0, 0 FROM items GROUP BY job_id, status"))
    conn.exec_driver_sql(_UPSERT.format(
        rows="SELECT job_id, status, 0, sum(prompt_tokens), sum(completion_tokens) "
             "FROM results GROUP BY job_id, status"))
