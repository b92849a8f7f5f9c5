"""job_counts stays exact whoever writes items and results, on SQLite and PostgreSQL:
the counts `nightshift status` shows without counting a million rows."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from conftest import Stack
from sqlalchemy import delete, func, insert, select, text, update

from producer.submit import submit
from schemas import db
from schemas.db import bulk, counters
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Item, Job, JobCount, Result


def _job(stack: Stack, items: int) -> str:
    job_id = uuid.uuid4().hex
    with db.session(stack.db_url) as session, session.begin():
        session.add(Job(id=job_id, kind="generate", model="m", spec={}))
        session.flush()
        session.execute(insert(Item), [{"job_id": job_id, "seq": n, "key": f"k{n}", "chunk": n // 4,
                                        "payload": {"prompt": "p"}} for n in range(items)])
        counters.add(session.connection(), job_id, "pending", items)  # as submit counts them
    return job_id


def _counters(stack: Stack, job_id: str) -> dict[str, tuple[int, int, int]]:
    with db.session(stack.db_url) as session:
        rows = session.execute(select(JobCount.status, JobCount.items, JobCount.prompt_tokens,
                                      JobCount.completion_tokens).where(JobCount.job_id == job_id))
        return {r[0]: (r[1], r[2], r[3]) for r in rows if any(r[1:])}


def _recounted(stack: Stack, job_id: str) -> dict[str, tuple[int, int, int]]:
    """The same figures counted the slow way, from the rows themselves."""
    with db.session(stack.db_url) as session:
        items = dict(session.execute(select(Item.status, func.count()).where(Item.job_id == job_id)
                                     .group_by(Item.status)).all())
        tokens = {r[0]: (int(r[1]), int(r[2])) for r in session.execute(
            select(Result.status, func.sum(Result.prompt_tokens),
                   func.sum(Result.completion_tokens))
            .where(Result.job_id == job_id).group_by(Result.status))}
    counted = {st: (n, *tokens.get(st, (0, 0))) for st, n in items.items()}
    counted.update({st: (0, *t) for st, t in tokens.items() if st not in items and any(t)})
    return {st: c for st, c in counted.items() if any(c)}


def _result(job_id: str, seq: int, status: str, prompt: int, completion: int) -> dict[str, Any]:
    return {"job_id": job_id, "item_seq": seq, "status": status, "prompt_tokens": prompt,
            "completion_tokens": completion}


def test_submit_counts_its_items_and_skipped_rows_are_not_counted(
        stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n'
                    '{"id": "b", "prompt": "z"}\n')
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    done = submit(settings, JobSpec(), path, skip_invalid=True)
    assert _counters(stack, done.job_id) == {"pending": (2, 0, 0)}
    assert _counters(stack, done.job_id) == _recounted(stack, done.job_id)


def test_item_updates_and_deletes_move_the_counts(stack: Stack) -> None:
    job_id = _job(stack, 10)
    assert _counters(stack, job_id) == {"pending": (10, 0, 0)}
    with db.session(stack.db_url) as session, session.begin():
        session.execute(update(Item).where(Item.job_id == job_id, Item.chunk == 0)
                        .values(status="running"))
        session.execute(update(Item).where(Item.job_id == job_id, Item.seq == 9)
                        .values(status="cancelled"))
        session.execute(update(Item).where(Item.job_id == job_id, Item.seq == 8)
                        .values(deaths=Item.deaths + 1))  # a status left alone changes no count
        session.execute(delete(Item).where(Item.job_id == job_id, Item.seq == 7))
    assert _counters(stack, job_id) == {"pending": (4, 0, 0), "running": (4, 0, 0),
                                        "cancelled": (1, 0, 0)}
    assert _counters(stack, job_id) == _recounted(stack, job_id)


def test_results_replaced_by_their_writer_or_changed_by_hand_keep_their_tokens_exact(
        stack: Stack) -> None:
    """The writer counts the results it inserts; the rows its replace deletes, and any
    update or delete by hand, are counted by the triggers. A chunk written twice counts
    its tokens once."""
    job_id = _job(stack, 4)
    keys = ["job_id", "item_seq"]
    with db.session(stack.db_url) as session, session.begin():
        conn = session.connection()
        bulk.replace_rows(conn, Result.__table__, keys,
                        [_result(job_id, n, "succeeded", 10, 5) for n in range(4)])
        counters.add_many(conn, job_id, {"succeeded": (0, 40, 20)})
        bulk.replace_rows(conn, Result.__table__, keys, [_result(job_id, 0, "succeeded", 10, 7)])
        counters.add_many(conn, job_id, {"succeeded": (0, 10, 7)})
        conn.execute(update(Result).where(Result.job_id == job_id, Result.item_seq == 1)
                     .values(status="failed", completion_tokens=0))
        conn.execute(delete(Result).where(Result.job_id == job_id, Result.item_seq == 3))
        for status, among in (("succeeded", [0, 2]), ("failed", [1])):
            bulk.update_among(conn, Item.__table__, {"status": status}, {"job_id": job_id},
                            "seq", among)
    assert _counters(stack, job_id) == {"succeeded": (2, 20, 12), "failed": (1, 10, 0),
                                        "pending": (1, 0, 0)}
    assert _counters(stack, job_id) == _recounted(stack, job_id)


def test_an_update_that_moves_writes_is_left_to_its_writer_and_any_other_is_counted(
        stack: Stack) -> None:
    job_id = _job(stack, 4)
    with db.session(stack.db_url) as session, session.begin():
        session.execute(update(Item).where(Item.job_id == job_id).values(status="running"))
        session.execute(update(Item).where(Item.job_id == job_id, Item.seq < 2)
                        .values(status="succeeded", writes=Item.writes + 1))
    assert _counters(stack, job_id) == {"running": (4, 0, 0)}  # the writer counts these
    with db.session(stack.db_url) as session, session.begin():
        session.execute(update(Item).where(Item.job_id == job_id, Item.seq == 0)
                        .values(status="pending"))  # by hand: counted, whatever `writes` says
    assert _counters(stack, job_id) == {"running": (4, 0, 0), "succeeded": (-1, 0, 0),
                                        "pending": (1, 0, 0)}


def test_missing_triggers_are_put_back_and_backfill_recounts(stack: Stack) -> None:
    """A SQLite table rebuild (Alembic batch mode) drops triggers: upgrade restores them,
    and drops the retired insert trigger (submit counts its items itself)."""
    job_id = _job(stack, 4)
    with db.engine_for(stack.db_url).begin() as conn:
        on = " ON items" if conn.dialect.name == "postgresql" else ""
        conn.execute(text(f"DROP TRIGGER items_counted_update{on}"))
        conn.execute(update(Item).where(Item.job_id == job_id).values(status="failed"))
    assert _counters(stack, job_id) == {"pending": (4, 0, 0)}  # stale without its trigger
    with db.engine_for(stack.db_url).begin() as conn:
        body = ("BEGIN SELECT 1; END" if conn.dialect.name == "sqlite"
                else "FOR EACH STATEMENT EXECUTE FUNCTION items_counted()")
        conn.execute(text(f"CREATE TRIGGER items_counted_insert AFTER INSERT ON items {body}"))
    db.upgrade(stack.db_url)
    with db.engine_for(stack.db_url).begin() as conn:
        assert counters._present(conn) == set(counters.TRIGGERS)
        counters.backfill(conn)
        conn.execute(update(Item).where(Item.job_id == job_id, Item.seq == 0)
                     .values(status="pending"))
    assert _counters(stack, job_id) == {"failed": (3, 0, 0), "pending": (1, 0, 0)}
