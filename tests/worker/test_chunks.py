"""Writing a chunk's outcomes: bulk, idempotent, and the job completes with its last chunk."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import Stack
from sqlalchemy import func, select

from producer.submit import submit
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Item, Job, JobCount, JobState, Result
from worker.chunks import write
from worker.generate import Outcome


def test_writing_a_chunk_twice_leaves_one_result_per_item(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=2), path).job_id

    first = [Outcome(i, "succeeded", output=f"first {i}") for i in (0, 1)]
    again = [Outcome(i, "succeeded", output=f"again {i}") for i in (0, 1)]
    write(stack.db_url, job, 0, "w1", first)
    write(stack.db_url, job, 0, "w2", again)
    with db.session(stack.db_url) as s:
        rows = s.execute(select(Result.item_seq, Result.output).where(Result.job_id == job)
                         .order_by(Result.item_seq)).all()
        assert rows == [(0, "again 0"), (1, "again 1")]
        assert s.get_one(Job, job).state == JobState.QUEUED

    write(stack.db_url, job, 1, "w1", [Outcome(2, "succeeded", output="x"),
                                       Outcome(3, "failed", error="prompt is too long")])
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
        seqs = range(chunk * 5, chunk * 5 + 5)
        write(stack.db_url, job, chunk, f"w{chunk}",
              [Outcome(i, "succeeded", output=str(i)) for i in seqs])

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

    write(stack.db_url, job, 0, "w1", [
        Outcome(i, "failed" if i % 2 else "succeeded", output=f"o{i}",
                error="bad" if i % 2 else None, prompt_tokens=10, completion_tokens=i)
        for i in range(6)])
    write(stack.db_url, job, 0, "w2", [  # a re-run: every item succeeds, no errors at all
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
