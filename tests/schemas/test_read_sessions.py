"""Readers beside writers on real SQLite: a read transaction left open (an export into a
slow pipe) takes no write lock, so writers commit at once; writers still take the lock as
they begin, one at a time."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from conftest import Stack
from sqlalchemy import func, insert, select

from schemas import db
from schemas.tables import Job

pytestmark = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)


def add_job(db_url: str) -> None:
    with db.session(db_url) as session, session.begin():
        session.execute(insert(Job), [{"id": uuid.uuid4().hex, "kind": "generate",
                                       "model": "smollm2-135m-instruct", "spec": {}}])


def jobs(db_url: str) -> int:
    with db.reader(db_url) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def in_thread(work: Callable[[], None]) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_an_open_read_transaction_lets_a_writer_commit_at_once(stack: Stack) -> None:
    add_job(stack.db_url)
    with db.reader(stack.db_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1  # snapshot taken
        started = time.monotonic()
        _, done = in_thread(lambda: add_job(stack.db_url))
        assert done.wait(5.0), "a writer waited on an open read transaction"
        assert time.monotonic() - started < 5.0
        assert session.scalar(select(func.count()).select_from(Job)) == 1  # its snapshot
    assert jobs(stack.db_url) == 2


def test_a_write_transaction_holds_the_lock_from_its_start_until_it_ends(
        stack: Stack) -> None:
    with db.session(stack.db_url) as session, session.begin():
        session.execute(select(1))  # begun: the write lock is taken here, before any write
        _, done = in_thread(lambda: add_job(stack.db_url))
        assert not done.wait(1.0), "a second writer went in beside an open write transaction"
    assert done.wait(10.0)
    assert jobs(stack.db_url) == 1
