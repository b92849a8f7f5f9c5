"""Writing a chunk's outcomes: bulk, idempotent, and the job completes with its last chunk."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack, lease
from scripted import ScriptedHost
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import default

from producer.submit import submit
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Attempt, Base, Chunk, ChunkStatus, Item, Job, JobCount, JobState, Result
from worker import leases
from worker.chunks import Runtime, rehearse, run_chunk, write
from worker.generate import Outcome


def test_a_write_by_a_worker_that_lost_its_lease_changes_nothing(
        stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=2), path).job_id
    stale = leases.claim(stack.db_url, job, 0, "w1", ttl=-1)  # paused past its lease
    assert stale is not None
    live = lease(stack.db_url, job, 0, "w2")
    before = _rows(stack.db_url)

    with pytest.raises(leases.LeaseLost, match="no longer leased by w1"):
        write(stack.db_url, stale, [Outcome(i, "succeeded", output=f"stale {i}") for i in (0, 1)])
    assert _rows(stack.db_url) == before
    with db.session(stack.db_url) as s:
        chunk = s.get_one(Chunk, (job, 0))
        assert (chunk.status, chunk.lease_owner) == (ChunkStatus.LEASED, "w2")

    write(stack.db_url, live, [Outcome(i, "succeeded", output=f"again {i}") for i in (0, 1)])
    with pytest.raises(leases.LeaseLost):  # the chunk is done: a late stale write still fails
        write(stack.db_url, stale, [Outcome(0, "failed", error="late")])
    with db.session(stack.db_url) as s:
        rows = s.execute(select(Result.item_seq, Result.output, Result.worker)
                         .where(Result.job_id == job).order_by(Result.item_seq)).all()
        assert rows == [(0, "again 0", "w2"), (1, "again 1", "w2")]
        assert s.get_one(Job, job).state == JobState.RUNNING
        assert not s.scalars(select(Attempt).where(Attempt.worker == "w1")).all()

    write(stack.db_url, lease(stack.db_url, job, 1, "w1"),
          [Outcome(2, "succeeded", output="x"), Outcome(3, "failed", error="prompt is too long")])
    with db.session(stack.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Result)
                        .where(Result.job_id == job)) == 4
        assert s.get_one(Job, job).state == JobState.COMPLETED


def test_several_writers_at_once_leave_one_row_per_item_and_complete_the_job(
        stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(40)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=5), path).job_id

    def writer(chunk: int) -> None:
        """Claims with a lease that is out at once, so the chunk's other writer can take
        it too: one of the two writes lands, or both, in turn; never a stale one."""
        seqs = range(chunk * 5, chunk * 5 + 5)
        taken = leases.claim(stack.db_url, job, chunk, f"w{chunk}-{uuid.uuid4().hex}", ttl=-1)
        if taken is not None:
            with contextlib.suppress(leases.LeaseLost):
                write(stack.db_url, taken, [Outcome(i, "succeeded", output=str(i)) for i in seqs])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(writer, [*range(8), *range(8)]))  # every chunk twice, all at once

    with db.session(stack.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Result)
                        .where(Result.job_id == job)) == 40
        assert s.get_one(Job, job).state == JobState.COMPLETED


def test_a_rewritten_chunk_keeps_counters_exact_and_clears_what_it_no_longer_says(
        stack: Stack, tmp_path: Path) -> None:
    """The bulk write's shortcuts (a column None in every row sent as NULL, one item update
    per status) change nothing the rows or job_counts say."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(6)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=6), path).job_id

    first = leases.claim(stack.db_url, job, 0, "w1", ttl=-1)  # then lost: another re-runs it
    assert first is not None
    write(stack.db_url, first, [
        Outcome(i, "failed" if i % 2 else "succeeded", output=f"o{i}",
                error="bad" if i % 2 else None, prompt_tokens=10, completion_tokens=i)
        for i in range(6)], last=False)
    write(stack.db_url, lease(stack.db_url, job, 0, "w2"), [  # every item succeeds this time
        Outcome(i, "succeeded", output=f"again {i}", prompt_tokens=20, completion_tokens=1)
        for i in range(6)])

    with db.session(stack.db_url) as s:
        rows = s.execute(select(Result.status, Result.error, Result.worker)
                         .where(Result.job_id == job)).all()
        assert set(rows) == {("succeeded", None, "w2")} and len(rows) == 6
        items = dict(s.execute(select(Item.status, func.count()).where(Item.job_id == job)
                               .group_by(Item.status)).all())
        counts = {r.status: (r.items, r.prompt_tokens, r.completion_tokens) for r in s.scalars(
            select(JobCount).where(JobCount.job_id == job)) if r.items or r.prompt_tokens}
        assert items == {"succeeded": 6}
        assert counts == {"succeeded": (6, 120, 6)}
        assert s.get_one(Job, job).state == JobState.COMPLETED


def test_a_write_counts_the_running_items_it_finishes_and_the_triggers_count_the_rest(
        stack: Stack, tmp_path: Path) -> None:
    """The write counts its results and the items it finished while they ran (their
    `writes` moved); an item no longer running (its lease lost and released) is counted
    by the triggers. Either way job_counts says what the rows say."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=5), path).job_id
    held = lease(stack.db_url, job, 0, "w1")
    with db.session(stack.db_url) as s, s.begin():
        s.execute(update(Item).where(Item.job_id == job, Item.seq >= 3).values(status="pending"))

    write(stack.db_url, held, [
        Outcome(0, "succeeded", output="a", prompt_tokens=3, completion_tokens=4),
        Outcome(1, "failed", error="bad", prompt_tokens=3, completion_tokens=0),
        Outcome(3, "succeeded", output="b", prompt_tokens=5, completion_tokens=6)])

    with db.session(stack.db_url) as s:
        items = s.execute(select(Item.seq, Item.status, Item.writes).where(Item.job_id == job)
                          .order_by(Item.seq)).all()
        counts = {r.status: (r.items, r.prompt_tokens, r.completion_tokens) for r in s.scalars(
            select(JobCount).where(JobCount.job_id == job)) if r.items or r.prompt_tokens}
    assert [tuple(r) for r in items] == [(0, "succeeded", 1), (1, "failed", 1),
                                         (2, "running", 0), (3, "succeeded", 0),
                                         (4, "pending", 0)]
    assert counts == {"succeeded": (2, 8, 10), "failed": (1, 3, 0), "running": (1, 0, 0),
                      "pending": (1, 0, 0)}


def test_a_rehearsed_worker_compiles_nothing_for_its_first_chunk_and_the_rehearsal_leaves_nothing(
        stack: Stack, tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=2), path).job_id
    host = ScriptedHost(tokenizer, lambda text, attempt: ("an answer", "stop", 0.0))
    beat = leases.Heartbeat(stack.db_url, "w", ttl=60)
    rt = Runtime(host, stack.db_url, "w", beat)  # type: ignore[arg-type]

    def compiled_by_first_chunk(seq: int, rehearsed: bool) -> list[str]:
        """Statements compiled (not found in the engine's cache) while running a chunk,
        on an engine as a worker process starts with."""
        db.engine_for.cache_clear()
        if rehearsed:
            before = _rows(stack.db_url)
            rehearse(rt)
            assert _rows(stack.db_url) == before
        compiled: list[str] = []
        me = threading.get_ident()

        def seen(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any,
                 _many: bool) -> None:
            if context.cache_hit is default.CACHE_MISS and threading.get_ident() == me:
                compiled.append(statement)

        event.listen(db.engine_for(stack.db_url), "after_cursor_execute", seen)
        assert run_chunk(rt, job, seq) == "done"
        return compiled

    try:
        assert len(compiled_by_first_chunk(0, rehearsed=False)) >= 5  # claim, load, write
        assert compiled_by_first_chunk(1, rehearsed=True) == []
    finally:
        beat.stop()
        db.engine_for.cache_clear()
    with db.session(stack.db_url) as s:
        assert s.get_one(Job, job).state == JobState.COMPLETED


def _rows(db_url: str) -> dict[str, int]:
    with db.session(db_url) as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) or 0
                for t in Base.metadata.sorted_tables}


def test_a_chunk_handed_back_after_an_engine_death_is_sent_again_at_once(
        stack: Stack, tmp_path: Path, tokenizer: Any) -> None:
    from concurrent.futures import Future

    from worker.broker import queue_depth
    from worker.engine import EngineDead

    class Dead(ScriptedHost):
        def submit(self, request_id: str, token_ids: list[int], params: Any, *,
                   lora: str | None = None) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_exception(EngineDead("engine core process gone"))
            return future

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(2)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=2), path).job_id
    queued = queue_depth(stack.broker_url, JobSpec().model)
    beat = leases.Heartbeat(stack.db_url, "w", ttl=60)
    rt = Runtime(Dead(tokenizer, lambda p, a: ("", "", 0)), stack.db_url, "w",  # type: ignore[arg-type]
                 beat, broker_url=stack.broker_url)
    try:
        with pytest.raises(EngineDead):
            run_chunk(rt, job, 0)
    finally:
        beat.stop()
    assert queue_depth(stack.broker_url, JobSpec().model) == queued + 1
    with db.session(stack.db_url) as s:
        chunk = s.get_one(Chunk, (job, 0))
        assert (chunk.status, chunk.lease_owner) == (ChunkStatus.PENDING, None)


def test_a_chunk_runs_its_stored_checks_with_their_defaults_and_fails_one_it_cannot_run(
        stack: Stack, tmp_path: Path, tokenizer: Any) -> None:
    """The worker validates the spec it loads: `length:max=3` is a number with its unit's
    default (the ladder asks the retry for a shorter answer), and a check this worker has
    no registration for fails each item's verdict with the reason, never the chunk, and
    spends no retry."""
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "p0"}) + "\n")
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)

    def run(checks: list[str]) -> tuple[Result, list[Attempt]]:
        job = submit(settings, JobSpec(checks=checks, max_attempts=2), path).job_id
        host = ScriptedHost(tokenizer, lambda text, attempt: ("a long answer", "stop", 0.0))
        beat = leases.Heartbeat(stack.db_url, "w", ttl=60)
        try:
            assert run_chunk(Runtime(host, stack.db_url, "w", beat), job, 0) == "done"  # type: ignore[arg-type]
        finally:
            beat.stop()
        with db.session(stack.db_url) as s:
            return (s.scalars(select(Result).where(Result.job_id == job)).one(),
                    list(s.scalars(select(Attempt).where(Attempt.job_id == job)
                                   .order_by(Attempt.attempt))))

    result, tries = run(["length:max=3"])
    assert (result.status, result.attempts) == ("failed", 2)
    assert "Answer completely in at most" in (tries[1].prompt or "")
    result, tries = run(["length:max=3", "spelling:lang=en"])
    assert (result.status, result.attempts) == ("failed", 1)
    assert "check 'spelling' is not registered on this worker" in (result.error or "")
