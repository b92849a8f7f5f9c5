"""SQLite's checkpoint, done after a bulk commit on a thread of its own (schemas.db)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from schemas import db


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _table(path: Path) -> str:
    """A WAL database with one table, its file's size settled (the last connection closed
    checkpoints)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (n INTEGER, body TEXT)")
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def _write(url: str, rows: int) -> None:
    """Rows that stay in the WAL: fewer pages than the commit's own checkpoint waits for."""
    with db.engine_for(url).begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (:n, :body)"),
                     [{"n": n, "body": "x" * 600} for n in range(rows)])


def test_a_nudge_copies_the_wal_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    url = _table(path)
    size = path.stat().st_size
    _write(url, 1_000)  # about 700 KB, all in the WAL
    assert path.stat().st_size == size
    db.checkpoint_soon(url)
    assert _until(lambda: path.stat().st_size > size + 500_000)


def test_the_thread_leaves_when_idle_and_a_later_commit_starts_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db._Checkpointer, "IDLE_S", 0.2)
    path = tmp_path / "c.db"
    url = _table(path)
    db.checkpoint_soon(url)
    first = db._checkpointers[url]
    assert _until(lambda: not first.is_alive())
    size = path.stat().st_size
    _write(url, 1_000)
    db.checkpoint_soon(url)
    assert db._checkpointers[url] is not first
    assert _until(lambda: path.stat().st_size > size + 500_000)


def test_other_databases_get_no_thread(unit_pg_url: str) -> None:
    db.checkpoint_soon(unit_pg_url)
    db.checkpoint_soon("sqlite://")
    assert unit_pg_url not in db._checkpointers and "sqlite://" not in db._checkpointers
