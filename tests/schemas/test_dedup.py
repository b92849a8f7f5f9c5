"""Identical requests are answered once: within a job the copies wait for the first one's
result, and with --reuse-results an earlier job's answer is taken at submit. Documents
always; other rows when greedy, or when the job asks for it (--dedup)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Stack, lease
from sqlalchemy import func, select

from producer.submit import submit
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec, Sampling
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


def _rows(tmp_path: Path, prompts: list[str]) -> Path:
    path = tmp_path / "rows.jsonl"
    run = tmp_path.name  # the PostgreSQL database outlives one test: prompts of their own
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"{p} ({run})"}) + "\n"
                            for i, p in enumerate(prompts)))
    return path


def _copies(stack: Stack, job: str) -> dict[str, int | None]:
    """Each item's id -> the id of the item it takes its answer from."""
    with db.session(stack.db_url) as session:
        rows = session.execute(select(Item.key, Item.seq, Item.same_as)
                               .where(Item.job_id == job)).all()
    key_of = {seq: key for key, seq, _ in rows}
    return {key: key_of.get(same_as) if same_as is not None else None
            for key, _, same_as in rows}


GREEDY = Sampling(temperature=0.0)


def test_identical_greedy_rows_run_once_and_sampled_rows_stay_independent_samples(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    path = _rows(tmp_path, ["Name a colour.", "Name a river.", "Name a colour.",
                            "Name a colour."])
    greedy = submit(settings, JobSpec(sampling=GREEDY), path).job_id
    assert _copies(stack, greedy) == {"r0": None, "r1": None, "r2": "r0", "r3": "r0"}
    sampled = submit(settings, JobSpec(), path).job_id
    assert set(_copies(stack, sampled).values()) == {None}
    shared = submit(settings, JobSpec(dedup=True), path).job_id
    assert _copies(stack, shared) == {"r0": None, "r1": None, "r2": "r0", "r3": "r0"}
    other_checks = submit(settings, JobSpec(sampling=GREEDY, checks=["not_empty"]), path)
    assert _copies(stack, other_checks.job_id)["r2"] == "r0"


def test_openai_rows_are_identical_only_when_their_whole_body_is(stack: Stack,
                                                                 tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    ask = f"What is 2 plus 2? ({tmp_path.name})"

    def line(custom_id: str, **body: Any) -> str:
        return json.dumps({"custom_id": custom_id, "method": "POST",
                           "url": "/v1/chat/completions", "body": {
                               "model": "m", "messages": [{"role": "user", "content": ask}],
                               **body}}) + "\n"

    path = tmp_path / "batch.jsonl"
    path.write_text(line("a", temperature=0) + line("b", temperature=0)
                    + line("c", temperature=0, max_tokens=5) + line("d", temperature=0.9)
                    + line("e", temperature=0.9))
    job = submit(settings, JobSpec(), path).job_id
    assert _copies(stack, job) == {"a": None, "b": "a", "c": None, "d": None, "e": None}


def test_a_resubmitted_greedy_file_is_answered_from_the_earlier_job_without_running(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    path = _rows(tmp_path, ["Name a colour.", "Name a river.", "Name a colour."])
    spec = JobSpec(sampling=GREEDY, chunk_size=10)
    first = submit(settings, spec, path).job_id
    seqs = {key: seq for key, seq in _keys(stack, first)}
    write(stack.db_url, lease(stack.db_url, first, 0, "w"),
          [Outcome(seqs["r0"], "succeeded", output="blue", completion_tokens=2),
           Outcome(seqs["r1"], "succeeded", output="the Nile", completion_tokens=3)])

    again = submit(settings, spec, path, reuse_results=True)
    assert again.reused == 2  # r2 is r0's copy within the job
    with db.session(stack.db_url) as session:
        outputs = dict(session.execute(
            select(Item.key, Result.output).join(Result, (Result.job_id == Item.job_id)
                                                 & (Result.item_seq == Item.seq))
            .where(Item.job_id == again.job_id)).all())
        tokens = session.scalar(select(func.sum(Result.completion_tokens))
                                .where(Result.job_id == again.job_id))
    assert outputs == {"r0": "blue", "r1": "the Nile", "r2": "blue"}
    assert not tokens  # nothing was generated for this job
    sampled = submit(settings, JobSpec(chunk_size=10), path, reuse_results=True)
    assert sampled.reused == 0  # a sampled row is a fresh sample


def _keys(stack: Stack, job: str) -> list[tuple[str, int]]:
    with db.session(stack.db_url) as session:
        return [(k, s) for k, s in session.execute(select(Item.key, Item.seq)
                                                   .where(Item.job_id == job))]


def test_a_copy_in_another_chunk_takes_the_answer_when_its_first_is_written_and_the_job_ends(
        stack: Stack, tmp_path: Path) -> None:
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    path = _rows(tmp_path, ["Name a colour.", "Name a river.", "Name a colour."])
    job = submit(settings, JobSpec(sampling=GREEDY, chunk_size=1), path).job_id
    with db.session(stack.db_url) as session:
        placed = {key: (seq, chunk) for key, seq, chunk in session.execute(
            select(Item.key, Item.seq, Item.chunk).where(Item.job_id == job))}
    assert len({chunk for _, chunk in placed.values()}) == 3
    for chunk in sorted({chunk for _, chunk in placed.values()}):
        with db.session(stack.db_url) as session:
            _, runnable = _load(session, job, chunk)
        write(stack.db_url, lease(stack.db_url, job, chunk, "w"),
              [Outcome(seq, "succeeded", output=f"answer {seq}", completion_tokens=1)
               for seq, *_ in runnable])
    with db.session(stack.db_url) as session:
        outputs = dict(session.execute(select(Result.item_seq, Result.output)
                                       .where(Result.job_id == job)).all())
        assert session.get_one(Job, job).state == "completed"
    first, copy = placed["r0"][0], placed["r2"][0]
    assert outputs[copy] == outputs[first] == f"answer {first}"
    assert _copies(stack, job)["r2"] == "r0"
