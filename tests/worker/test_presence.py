"""Workers in SQL (worker.presence), on SQLite and PostgreSQL: a worker's row from start to
a clean stop, its heartbeat on the database's clock, the generation rate it reports, and
beats that wait for a locked database only so long."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest import Stack
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from schemas import db
from schemas.tables import Worker
from worker import presence
from worker.presence import Presence


def _presence(stack: Stack, **given: Any) -> Presence:
    """A worker of a model of its own: the PostgreSQL database is shared by tests."""
    given.setdefault("every", 3600.0)
    return Presence(stack.db_url, f"w1:{uuid.uuid4().hex[:8]}", f"acme/m-{uuid.uuid4().hex[:8]}",
                    3, name="w1", **given)


def _shown(stack: Stack, p: Presence, *, everyone: bool = False) -> dict[str, Any] | None:
    rows = [w for w in presence.listed(stack.db_url, everyone=everyone) if w["id"] == p.row["id"]]
    return rows[0] if rows else None


def _live(stack: Stack) -> set[str]:
    with db.session(stack.db_url) as s:
        return presence.live_models(s)


def _row(stack: Stack, p: Presence) -> Worker | None:
    with db.session(stack.db_url) as s:
        return s.get(Worker, p.row["id"])


def _age(stack: Stack, p: Presence, by: timedelta) -> None:
    with db.session(stack.db_url) as s, s.begin():
        s.execute(update(Worker).where(Worker.id == p.row["id"])
                  .values(last_heartbeat_at=db.clock(s) - by))


def test_a_started_worker_is_live_with_its_model_and_slots_until_it_stops(stack: Stack) -> None:
    p = _presence(stack).start()
    try:
        shown = _shown(stack, p)
        assert shown is not None
        assert {k: shown[k] for k in ("name", "host", "model", "slots", "state")} == {
            "name": "w1", "host": socket.gethostname(), "model": p.row["model"], "slots": 3,
            "state": "running"}
        assert 0 <= shown["heartbeat_age_s"] < 5
        assert p.row["model"] in _live(stack)
    finally:
        p.stop()

    assert _shown(stack, p) is None and p.row["model"] not in _live(stack)
    stopped = _shown(stack, p, everyone=True)
    assert stopped is not None and stopped["state"] == "stopped"


def test_a_beat_renews_the_heartbeat_and_reports_the_generation_rate(stack: Stack) -> None:
    tokens = [0.0]
    p = _presence(stack, tokens=lambda: tokens[0])
    p.register()
    p.beat()
    first = _row(stack, p)
    assert first is not None and first.tokens_per_s == 0.0

    tokens[0] = 500.0
    time.sleep(0.25)
    p.beat()

    now = _row(stack, p)
    assert now is not None and now.last_heartbeat_at > first.last_heartbeat_at
    assert 100 < now.tokens_per_s <= 2000  # 500 tokens in a quarter second and a little more


def test_a_worker_whose_row_was_deleted_is_recorded_again_at_its_next_beat(stack: Stack) -> None:
    p = _presence(stack)
    p.register()
    with db.session(stack.db_url) as s, s.begin():
        s.delete(s.get_one(Worker, p.row["id"]))

    p.beat()

    assert p.row["model"] in _live(stack)


def test_a_worker_silent_for_five_minutes_is_stale_not_live(stack: Stack) -> None:
    p = _presence(stack)
    p.register()
    _age(stack, p, presence.LIVE + timedelta(minutes=1))

    assert _shown(stack, p) is None and p.row["model"] not in _live(stack)
    stale = _shown(stack, p, everyone=True)
    assert stale is not None and stale["state"] == "stale" and stale["heartbeat_age_s"] >= 360


def test_a_starting_worker_forgets_workers_not_heard_from_for_a_week(stack: Stack) -> None:
    old, recent = _presence(stack), _presence(stack)
    old.register()
    recent.register()
    _age(stack, old, presence.FORGET + timedelta(hours=1))
    _age(stack, recent, presence.FORGET - timedelta(hours=1))

    _presence(stack).start().stop()

    assert _row(stack, old) is None and _row(stack, recent) is not None


@contextmanager
def _locked(stack: Stack) -> Iterator[None]:
    """Another writer holding the lock a beat needs (SQLite's database, PostgreSQL's table)."""
    if stack.db_url.startswith("sqlite"):
        conn = sqlite3.connect(stack.db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.rollback()
            conn.close()
        return
    with psycopg.connect(stack.db_url) as pg:
        pg.execute("LOCK TABLE workers IN EXCLUSIVE MODE")
        yield
        pg.rollback()


def test_a_beat_waits_for_a_locked_database_only_so_long(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presence, "WAIT_S", 0.5)
    p = _presence(stack)
    p.register()
    with _locked(stack):
        started = time.monotonic()
        with pytest.raises(OperationalError):
            p.beat()
        assert time.monotonic() - started < 3
    p.beat()  # the connection's usual wait is back: nothing holds the lock now


def test_missed_beats_are_logged_and_the_worker_is_recorded_once_the_database_is_free(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(presence, "WAIT_S", 0.3)
    caplog.set_level(logging.WARNING, logger="worker.presence")
    p = _presence(stack, every=0.1)
    with _locked(stack):
        p.start()  # its registration waits, fails and is logged; the worker goes on
        time.sleep(1.5)
        assert "could not record this worker" in caplog.text
        assert "worker heartbeat missed" in caplog.text
        assert any(t.name == "presence" for t in threading.enumerate())
    try:
        deadline = time.monotonic() + 10
        while p.row["model"] not in _live(stack) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.row["model"] in _live(stack)
    finally:
        p.stop()
    assert _row(stack, p) is not None
    with db.session(stack.db_url) as s:
        assert s.scalar(select(Worker.state).where(Worker.id == p.row["id"])) == "stopped"
