"""Identical documents are answered once: within a job the copies wait for the first one's
result, and with --reuse-results an earlier job's answer is taken at submit."""

from __future__ import annotations

from pathlib import Path

from conftest import Stack, lease
from sqlalchemy import select

from producer.submit import submit
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Item, Job, Result
from worker.attempts import Outcome
from worker.chunks import _load, write


def _folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    run = tmp_path.name  # the PostgreSQL database outlives one test: texts of their own
    (docs / "a.txt").write_text(f"The same report ({run}).\n")
    (docs / "b.txt").write_text(f"A different report ({run}).\n")
    (docs / "copy-of-a.txt").write_text(f"The same report ({run}).\n")
    return docs


def _items(stack: Stack, job: str) -> dict[str, tuple[int, int | None, str]]:
    with db.session(stack.db_url) as session:
        rows = session.execute(select(Item.key, Item.seq, Item.same_as, Item.status)
                               .where(Item.job_id == job)).all()
    return {Path(key).name: (seq, same_as, status) for key, seq, same_as, status in rows}


def test_a_copy_of_a_document_does_not_run_and_takes_the_first_ones_result(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    spec = JobSpec(template="Summarize: {{ text }}", chunk_size=10)
    job = submit(settings, spec, _folder(tmp_path), fmt="documents").job_id
    items = _items(stack, job)
    a, b, copy = items["a.txt"], items["b.txt"], items["copy-of-a.txt"]
    assert (a[1], b[1], copy[1]) == (None, None, a[0])

    with db.session(stack.db_url) as session:
        _, runnable = _load(session, job, 0)
    assert sorted(seq for seq, *_ in runnable) == sorted([a[0], b[0]])
    write(stack.db_url, lease(stack.db_url, job, 0, "w"),
          [Outcome(a[0], "succeeded", output="summary of a"),
           Outcome(b[0], "succeeded", output="summary of b")])
    with db.session(stack.db_url) as session:
        outputs = dict(session.execute(select(Result.item_seq, Result.output)
                                       .where(Result.job_id == job)).all())
        assert outputs[copy[0]] == "summary of a"
        assert session.get_one(Job, job).state == "completed"
    assert _items(stack, job)["copy-of-a.txt"][2] == "succeeded"


def test_reuse_results_takes_an_earlier_jobs_answer_only_when_everything_matches(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    docs = _folder(tmp_path)
    spec = JobSpec(template="Summarize: {{ text }}", chunk_size=10)
    first = submit(settings, spec, docs, fmt="documents").job_id
    seqs = _items(stack, first)
    write(stack.db_url, lease(stack.db_url, first, 0, "w"), [
        Outcome(seqs["a.txt"][0], "succeeded", output="summary of a"),
        Outcome(seqs["b.txt"][0], "failed", error="engine refused")])

    again = submit(settings, spec, docs, fmt="documents", reuse_results=True)
    items = _items(stack, again.job_id)
    assert again.reused == 1  # a (b's earlier answer failed: it runs again)
    assert items["a.txt"][2] == "succeeded" and items["copy-of-a.txt"][2] == "succeeded"
    assert items["b.txt"][2] == "pending"
    with db.session(stack.db_url) as session:
        assert session.scalar(select(Result.output).where(
            Result.job_id == again.job_id, Result.item_seq == items["a.txt"][0])) == "summary of a"

    other = JobSpec(template="Translate: {{ text }}", chunk_size=10)
    changed = submit(settings, other, docs, fmt="documents", reuse_results=True)
    assert changed.reused == 0  # another prompt is another question
