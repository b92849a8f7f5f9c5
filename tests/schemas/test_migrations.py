"""Alembic migrations on SQLite and PostgreSQL: the schema they build is exactly the one
schemas/tables.py declares, and they go down to nothing and up again cleanly.

Each backend gets a database of its own, created empty for the test, so nothing another
test wrote can hide a missing migration.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import PG_ADMIN
from sqlalchemy import func, insert, inspect, select, update

from schemas import db
from schemas.db import counters
from schemas.tables import Base, Item, Job, JobCount, Result

TABLES = {"jobs", "items", "chunks", "results", "attempts", "pieces", "job_counts", "workers",
          "api_keys", "files", "batches", "logins", "reviews"}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    name = f"nightshift_migrations_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        db.engine_for(url).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alembic(url: str, action: str, revision: str) -> None:
    """`alembic upgrade|downgrade REVISION` the way `nightshift db upgrade` runs it."""
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    with db.engine_for(url).begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def differences(url: str) -> list[Any]:
    """What autogenerate would write to make the database match tables.py (types included)."""
    with db.engine_for(url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def tables(url: str) -> set[str]:
    return set(inspect(db.engine_for(url)).get_table_names()) - {"alembic_version"}


def head() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    revision = ScriptDirectory.from_config(cfg).get_current_head()
    assert revision is not None
    return revision


def current(url: str) -> str | None:
    with db.engine_for(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_to_head_builds_exactly_the_declared_schema(empty_db: str) -> None:
    db.upgrade(empty_db)
    assert current(empty_db) == head()
    assert tables(empty_db) == TABLES
    assert differences(empty_db) == []


def test_downgrade_to_base_and_upgrade_again_round_trips(empty_db: str) -> None:
    db.upgrade(empty_db)
    alembic(empty_db, "downgrade", "base")
    assert tables(empty_db) == set() and current(empty_db) is None

    alembic(empty_db, "upgrade", "head")
    assert current(empty_db) == head()
    assert differences(empty_db) == []


def test_each_revision_downgrades_to_its_predecessor(empty_db: str) -> None:
    """Step by step, so a downgrade that only works from head is caught too."""
    db.upgrade(empty_db)
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    revisions = list(ScriptDirectory.from_config(cfg).walk_revisions())  # head first
    for script in revisions:
        assert current(empty_db) == script.revision
        alembic(empty_db, "downgrade", "-1")
    assert current(empty_db) is None and tables(empty_db) == set()


def test_upgrade_twice_is_a_no_op(empty_db: str) -> None:
    db.upgrade(empty_db)
    db.upgrade(empty_db)
    assert current(empty_db) == head() and differences(empty_db) == []


def test_an_items_status_change_touches_no_index(empty_db: str) -> None:
    """No index holds an item's status, and on PostgreSQL its pages keep half their room:
    claiming an item and writing its result are HOT updates (migrations 0006 and 0007)."""
    db.upgrade(empty_db)
    engine = db.engine_for(empty_db)
    indexed = {column for index in inspect(engine).get_indexes("items")
               for column in index["column_names"]}
    assert "status" not in indexed and "chunk" in indexed
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            options = conn.exec_driver_sql(
                "SELECT reloptions FROM pg_class WHERE relname = 'items'").scalar()
        assert options == ["fillfactor=50"]


def test_dropping_the_job_keys_keeps_rows_counters_and_their_triggers(empty_db: str) -> None:
    """0008 rebuilds SQLite's per-item tables: a job written before it keeps its items,
    results and counts, and later status changes are still counted."""
    db.upgrade(empty_db, revision="0007")
    with db.engine_for(empty_db).begin() as conn:
        counters.ensure(conn)
        conn.execute(insert(Job.__table__), {"id": "j1", "kind": "generate", "model": "m",
                                              "spec": {}})
        conn.execute(insert(Item.__table__), [
            {"job_id": "j1", "seq": n, "key": f"k{n}", "chunk": 0, "payload": {"prompt": "p"}}
            for n in range(3)])
        counters.add(conn, "j1", "pending", 3)
        conn.execute(update(Item.__table__).where(Item.seq == 0).values(status="succeeded"))
        conn.execute(insert(Result.__table__), {"job_id": "j1", "item_seq": 0,
                                                 "status": "succeeded", "completion_tokens": 7})
        counters.add(conn, "j1", "succeeded", completion_tokens=7)  # as its writer counts it
    db.upgrade(empty_db)

    engine = db.engine_for(empty_db)
    assert all(inspect(engine).get_foreign_keys(t) == [] for t in ("items", "results"))
    with engine.begin() as conn:
        conn.execute(update(Item.__table__).where(Item.seq == 1).values(status="failed"))
        counts = dict(conn.execute(select(JobCount.status, JobCount.items)).all())
        tokens = conn.execute(select(func.sum(JobCount.completion_tokens))).scalar()
        assert counters._present(conn) >= set(counters.TRIGGERS)
    assert {k: v for k, v in counts.items() if v} == {"pending": 1, "succeeded": 1, "failed": 1}
    assert tokens == 7
