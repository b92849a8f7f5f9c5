"""The bulk statements behind submit and result writes (schemas.db.bulk): same rows as the
ORM would store, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from conftest import Stack
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from schemas import db
from schemas.db import bulk, counters
from schemas.tables import Item, ItemStatus, Job, JobCount, Result


def _job(stack: Stack) -> str:
    job_id = uuid.uuid4().hex
    with db.session(stack.db_url) as session, session.begin():
        session.add(Job(id=job_id, kind="generate", model="m", spec={}))
    return job_id


def _items(job_id: str, seqs: range, key: str = "k") -> list[tuple[object, ...]]:
    return [(job_id, n, f"{key}{n}", 0, '{"prompt": "p\\tq\\n"}', ItemStatus.PENDING, 0)
            for n in seqs]


COLUMNS = ("job_id", "seq", "key", "chunk", "payload", "status", "deaths")


def test_insert_rows_stores_what_the_orm_reads_back(stack: Stack) -> None:
    job_id = _job(stack)
    with db.session(stack.db_url) as session, session.begin():
        bulk.insert_rows(session.connection(), Item.__table__, COLUMNS, _items(job_id, range(3)))
    with db.session(stack.db_url) as session:
        items = session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)).all()
    assert [(i.seq, i.key, i.payload, i.status) for i in items] == [
        (n, f"k{n}", {"prompt": "p\tq\n"}, "pending") for n in range(3)]


def test_insert_rows_reports_a_duplicate_key_as_integrity_error(stack: Stack) -> None:
    """On PostgreSQL too, where COPY's own error is turned into SQLAlchemy's."""
    job_id = _job(stack)
    with db.session(stack.db_url) as session, session.begin():
        bulk.insert_rows(session.connection(), Item.__table__, COLUMNS, _items(job_id, range(2)))
        with pytest.raises(IntegrityError), session.begin_nested():
            bulk.insert_rows(session.connection(), Item.__table__, COLUMNS,
                           [(job_id, 5, "k1", 0, "{}", ItemStatus.PENDING, 0)])
        bulk.insert_rows(session.connection(), Item.__table__, COLUMNS, _items(job_id, range(2, 3)))
    with db.session(stack.db_url) as session:
        assert session.scalars(select(Item.seq).where(Item.job_id == job_id)).all() == [0, 1, 2]


def test_upsert_rows_replaces_by_key_and_fills_defaults(stack: Stack) -> None:
    job_id = _job(stack)
    with db.session(stack.db_url) as session, session.begin():
        bulk.insert_rows(session.connection(), Item.__table__, COLUMNS, _items(job_id, range(2)))
    before = datetime.now(UTC)
    first = [{"job_id": job_id, "item_seq": n, "status": "succeeded", "output": f"o{n}",
              "probabilities": {"yes": 0.75}, "samples": None, "sampling": {"seed": n}}
             for n in range(2)]
    with db.session(stack.db_url) as session, session.begin():
        bulk.upsert_rows(session.connection(), Result.__table__, ["job_id", "item_seq"], first)
        bulk.upsert_rows(session.connection(), Result.__table__, ["job_id", "item_seq"],
                       [{**first[1], "status": "failed", "output": None, "error": "e"}])
    with db.session(stack.db_url) as session:
        rows = session.scalars(select(Result).where(Result.job_id == job_id)
                               .order_by(Result.item_seq)).all()
    assert [(r.status, r.output, r.error) for r in rows] == [("succeeded", "o0", None),
                                                           ("failed", None, "e")]
    assert rows[0].probabilities == {"yes": 0.75} and rows[0].sampling == {"seed": 0}
    assert rows[0].samples is None and rows[0].attempts == 1  # the column's default
    assert rows[0].created_at >= before.replace(microsecond=0)


def test_update_among_sets_the_listed_rows_and_counts_them(stack: Stack) -> None:
    """A run of keys is one range; keys with gaps are a range and a list."""
    job_id = _job(stack)
    with db.session(stack.db_url) as session, session.begin():
        bulk.insert_rows(session.connection(), Item.__table__, COLUMNS, _items(job_id, range(5)))
        changed = [bulk.update_among(session.connection(), Item.__table__, {"status": status},
                                   {"job_id": job_id}, "seq", among, increment=["deaths"])
                   for status, among in (("succeeded", [1, 2]), ("failed", [4, 0]))]
    with db.session(stack.db_url) as session:
        items = session.execute(select(Item.status, Item.deaths).where(Item.job_id == job_id)
                                .order_by(Item.seq)).all()
    assert changed == [2, 2]
    assert items == [("failed", 1), ("succeeded", 1), ("succeeded", 1), ("pending", 0),
                     ("failed", 1)]


def test_update_among_finds_rows_by_a_text_key(stack: Stack) -> None:
    """A text key gets no range on PostgreSQL: its collation, not Python, orders it."""
    job_id = _job(stack)
    with db.session(stack.db_url) as session, session.begin():
        for status in ("Zeta", "alpha", "mid"):
            counters.add(session.connection(), job_id, status, 1)
        bulk.update_among(session.connection(), JobCount.__table__, {"items": 5},
                          {"job_id": job_id}, "status", ["Zeta", "alpha"])
    with db.session(stack.db_url) as session:
        counts = {status: n for status, n in session.execute(
            select(JobCount.status, JobCount.items).where(JobCount.job_id == job_id))}
    assert counts == {"Zeta": 5, "alpha": 5, "mid": 1}


def test_replace_rows_replaces_each_row_whole_once_per_key(stack: Stack) -> None:
    """PostgreSQL deletes and COPYs, SQLite upserts: the same rows either way, a column
    None in every row included."""
    job_id = _job(stack)
    first = [{"job_id": job_id, "item_seq": n, "status": "failed", "output": None,
              "error": f"e{n}", "sampling": {"seed": n}} for n in range(3)]
    again = [{"job_id": job_id, "item_seq": n, "status": "succeeded", "output": f"o{n}",
              "error": None, "sampling": {"seed": n}} for n in (2, 0)]
    with db.session(stack.db_url) as session, session.begin():
        bulk.replace_rows(session.connection(), Result.__table__, ["job_id", "item_seq"], first)
        bulk.replace_rows(session.connection(), Result.__table__, ["job_id", "item_seq"], again)
    with db.session(stack.db_url) as session:
        rows = session.scalars(select(Result).where(Result.job_id == job_id)
                               .order_by(Result.item_seq)).all()
    assert [(r.item_seq, r.status, r.output, r.error) for r in rows] == [
        (0, "succeeded", "o0", None), (1, "failed", None, "e1"), (2, "succeeded", "o2", None)]
    assert rows[2].sampling == {"seed": 2} and rows[2].attempts == 1


def test_replaced_results_are_stamped_by_postgresql_and_by_the_writer_elsewhere(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A COPY parses each value it is sent: PostgreSQL's own clock fills `created_at`
    (migration 0017) where the writer's default would send one timestamp per row."""
    writer_clock = datetime(2001, 1, 1, tzinfo=UTC)
    monkeypatch.setattr(Result.__table__.c.created_at.default, "arg", lambda _: writer_clock)
    job_id, before = _job(stack), datetime.now(UTC)
    with db.session(stack.db_url) as session, session.begin():
        bulk.replace_rows(session.connection(), Result.__table__, ["job_id", "item_seq"],
                          [{"job_id": job_id, "item_seq": n, "status": "succeeded"}
                           for n in range(3)])
    with db.session(stack.db_url) as session:
        stamps = set(session.scalars(select(Result.created_at)
                                     .where(Result.job_id == job_id)))
    if stack.name == "postgres":
        assert len(stamps) == 1 and before <= stamps.pop() <= datetime.now(UTC)
    else:
        assert stamps == {writer_clock}


def test_copy_keeps_every_character_and_null_apart(stack: Stack) -> None:
    """Tabs, line ends, backslashes and a literal \\N survive COPY's text format; None is
    NULL and the empty string stays empty."""
    job_id = _job(stack)
    texts = ["a\tb", "line\nnext\r\n", "back\\slash \\N", "", None, "naïve ✓"]
    rows = [{"job_id": job_id, "item_seq": n, "status": "succeeded", "output": text,
             "error": "\\N" if text is None else None, "prompt_tokens": n}
            for n, text in enumerate(texts)]
    with db.session(stack.db_url) as session, session.begin():
        bulk.replace_rows(session.connection(), Result.__table__, ["job_id", "item_seq"], rows)
    with db.session(stack.db_url) as session:
        stored = session.execute(select(Result.output, Result.error, Result.prompt_tokens)
                                 .where(Result.job_id == job_id).order_by(Result.item_seq)).all()
    assert [tuple(r) for r in stored] == [
        (text, "\\N" if text is None else None, n) for n, text in enumerate(texts)]
