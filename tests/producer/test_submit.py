"""Submitting writes a whole job to SQL and one message per chunk to Redis, or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from conftest import Stack
from sqlalchemy import func, select

from producer import export
from producer.submit import submit
from schemas import db
from schemas.errors import BrokerUnreachable, DatabaseUnreachable, InputError
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Chunk, Item, Job
from worker.broker import queue_for


def _count(stack: Stack, table: type) -> int:
    with db.session(stack.db_url) as session:
        return session.scalar(select(func.count()).select_from(table))


def _jsonl(tmp_path: Path, n: int, bad_line: int | None = None) -> Path:
    lines = [json.dumps({"id": f"i{k}", "prompt": f"prompt {k}"}) for k in range(n)]
    if bad_line is not None:
        lines[bad_line - 1] = '{"id": "broken"'
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _queued(stack: Stack) -> list[dict]:
    """Every message of the model's queue, over its priority lists (kombu keeps one each)."""
    client = redis.Redis.from_url(stack.broker_url)
    return [json.loads(m) for key in client.keys(queue_for(JobSpec().model) + "*")
            for m in client.lrange(key, 0, -1)]


def test_submit_writes_items_and_chunks_and_one_id_only_message_per_chunk(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    done = submit(settings, JobSpec(chunk_size=4), _jsonl(tmp_path, 10))

    assert (done.items, done.chunks) == (10, 3)
    with db.session(stack.db_url) as session:
        assert session.get_one(Job, done.job_id).total == 10
        sizes = session.scalars(select(Chunk.size).where(Chunk.job_id == done.job_id)
                                .order_by(Chunk.seq)).all()
    assert sizes == [4, 4, 2]
    messages = _queued(stack)
    assert len(messages) == 3
    assert all(m["headers"]["argsrepr"].startswith(f"['{done.job_id}',") for m in messages)
    assert {m["content-type"] for m in messages} == {"application/json"}


def test_a_bad_row_creates_no_job_unless_skipped(stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    path = _jsonl(tmp_path, 5, bad_line=4)
    jobs_before = _count(stack, Job)

    with pytest.raises(InputError, match="line 4: malformed JSON.*no job was created"):
        submit(settings, JobSpec(), path)
    assert _count(stack, Job) == jobs_before
    assert _queued(stack) == []

    done = submit(settings, JobSpec(), path, skip_invalid=True)
    assert (done.items, done.invalid_count) == (4, 1)
    with db.session(stack.db_url) as session:
        keys = session.scalars(select(Item.key).where(Item.job_id == done.job_id)).all()
    assert "broken" not in keys and len(keys) == 4


def test_rows_written_with_the_job_stand_or_fall_with_it(stack: Stack, tmp_path: Path) -> None:
    """A Batch API batch is written in the job's own transaction: a failure there leaves
    neither the job, nor its items, nor a message; a success leaves both."""
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    jobs_before, items_before = _count(stack, Job), _count(stack, Item)

    def refuse(_session: object, _job_id: str) -> None:
        raise RuntimeError("the batch row could not be written")

    with pytest.raises(RuntimeError, match="the batch row"):
        submit(settings, JobSpec(), _jsonl(tmp_path, 3), with_job=refuse)
    assert (_count(stack, Job), _count(stack, Item)) == (jobs_before, items_before)
    assert _queued(stack) == []

    seen: list[tuple[str, int]] = []  # the job as the hook's transaction sees it
    done = submit(settings, JobSpec(), _jsonl(tmp_path, 3), with_job=lambda session, job_id:
                  seen.append((job_id, session.get_one(Job, job_id).total)))
    assert seen == [(done.job_id, 3)]


def test_duplicate_ids_are_invalid_rows(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    with pytest.raises(InputError, match="line 2: duplicate id 'a'"):
        submit(settings, JobSpec(), path)


def test_unreachable_broker_is_one_line_naming_the_url_and_creates_nothing(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url="redis://:s3cret@127.0.0.1:1/0")
    jobs_before = _count(stack, Job)
    with pytest.raises(BrokerUnreachable) as caught:
        submit(settings, JobSpec(), _jsonl(tmp_path, 2))
    assert "redis://:***@127.0.0.1:1/0" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert _count(stack, Job) == jobs_before


def test_unreachable_database_is_one_line_naming_the_url(tmp_path: Path) -> None:
    settings = load(database_url="postgresql://u:pw@127.0.0.1:1/none",
                    broker_url="redis://127.0.0.1:6379/13")
    with pytest.raises(DatabaseUnreachable, match=r"postgresql://u:\*\*\*@127.0.0.1:1/none"):
        submit(settings, JobSpec(), _jsonl(tmp_path, 2))


def test_duplicates_across_write_batches_are_found_and_shown_in_line_order(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Duplicates are found by the table's unique index, batch by batch (no set of every
    id in memory): one in the same batch, one in a later batch, beside a malformed row.
    A malformed row is reported as it is read, a duplicate as the rows are written."""
    monkeypatch.setattr("producer.submit.BATCH", 3)
    rows = ['{"id": "a", "prompt": "1"}', '{"id": "b", "prompt": "2"}',
            '{"id": "a", "prompt": "3"}', '{"id": "c", "prompt": "4"}', '{"id": "x"',
            '{"id": "b", "prompt": "6"}', '{"id": "d", "prompt": "7"}']
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(rows) + "\n")
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    reported: list[str] = []
    done = submit(settings, JobSpec(chunk_size=2), path, skip_invalid=True,
                  on_invalid=lambda e: reported.append(str(e)))

    assert [e.split(":")[0] for e in reported] == ["line 5", "line 3", "line 6"]
    assert [str(e) for e in done.invalid] == [reported[1], reported[0], reported[2]]
    assert "duplicate id 'a'" in reported[1] and "duplicate id 'b'" in reported[2]
    assert (done.items, done.invalid_count, done.chunks) == (4, 3, 2)
    with db.session(stack.db_url) as session:
        stored = session.execute(select(Item.seq, Item.key, Item.chunk, Item.payload)
                                 .where(Item.job_id == done.job_id).order_by(Item.seq)).all()
    assert [tuple(r) for r in stored] == [
        (0, "a", 0, {"prompt": "1"}), (1, "b", 0, {"prompt": "2"}),
        (2, "c", 1, {"prompt": "4"}), (3, "d", 1, {"prompt": "7"})]


def test_without_skip_a_duplicate_in_a_later_batch_still_refuses_the_whole_job(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("producer.submit.BATCH", 2)
    path = _jsonl(tmp_path, 5)
    path.write_text(path.read_text() + '{"id": "i0", "prompt": "again"}\n')
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    jobs_before, items_before = _count(stack, Job), _count(stack, Item)
    with pytest.raises(InputError, match="line 6: duplicate id 'i0'.*no job was created"):
        submit(settings, JobSpec(), path)
    assert (_count(stack, Job), _count(stack, Item)) == (jobs_before, items_before)


@pytest.mark.parametrize(("check", "message"), [
    ("spelling", "job spec: unknown check 'spelling' (known: non_empty, "),
    ("length:max=many", "job spec: check length: max: Input should be a valid integer"),
    ("json_schema", "job spec: check json_schema needs the job's --json-schema"),
])
def test_a_check_that_cannot_run_is_refused_at_submit_and_nothing_is_written(
        stack: Stack, tmp_path: Path, check: str, message: str) -> None:
    from click.testing import CliRunner

    from producer.cli import cli

    jobs, queued = _count(stack, Job), _queued(stack)
    result = CliRunner().invoke(cli, ["submit", str(_jsonl(tmp_path, 2)), "--check", check,
                                      "--database-url", stack.db_url,
                                      "--broker-url", stack.broker_url])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert (_count(stack, Job), _queued(stack)) == (jobs, queued)


def test_questions_in_question_order_are_chunked_by_document_and_exported_in_input_order(
        stack: Stack, tmp_path: Path) -> None:
    documents = [f"Lease {d}. " + f"The tenant of flat {d} pays rent monthly. " * 40
                 for d in range(5)]
    rows = [{"custom_id": f"d{d}-q{q}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user",
                                    "content": f"{documents[d]}\n\nQuestion {q}: who pays?"}]}}
            for q in range(3) for d in range(5)]
    path = tmp_path / "asked.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    done = submit(settings, JobSpec(chunk_size=3), path)

    assert (done.items, done.chunks) == (15, 5)
    with db.session(stack.db_url) as session:
        stored = session.execute(select(Item.seq, Item.key, Item.chunk)
                                 .where(Item.job_id == done.job_id).order_by(Item.seq)).all()
    assert [key for _, key, _ in stored] == [row["custom_id"] for row in rows]
    assert [seq for seq, _, _ in stored] == list(range(15))
    chunk_of = {key: chunk for _, key, chunk in stored}
    for d in range(5):  # each document's three questions: one chunk, of its own
        assert {chunk_of[f"d{d}-q{q}"] for q in range(3)} == {chunk_of[f"d{d}-q0"]}
    assert sorted(chunk_of[f"d{d}-q0"] for d in range(5)) == list(range(5))
    exported = [item.key for _, item, _, _ in export.rows(stack.db_url, done.job_id)]
    assert exported == [row["custom_id"] for row in rows]
