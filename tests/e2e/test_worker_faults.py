"""Faults injected into the real pipeline; each ends with every item final, exactly one
result row per item, and nothing left pending or leased."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import psutil
import redis
from conftest import Stack, Worker
from kombu import Connection, Exchange, Producer
from sqlalchemy import func, select

from schemas import db
from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus, Result
from worker.app import RUN_CHUNK
from worker.broker import queue_for

MODEL = "smollm2-135m-instruct"


def _submit(stack: Stack, tmp_path: Path, n: int, chunk: int, max_tokens: int,
            ask: str = "Write a sentence about the number {i}.") -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"k{i}", "prompt": ask.format(i=i)}) + "\n"
                            for i in range(n)))
    return stack.cli_json("submit", str(path), "--json", "--chunk-size", str(chunk),
                          "--max-tokens", str(max_tokens))["job_id"]


def _assert_exactly_once(stack: Stack, job: str, total: int) -> None:
    with db.session(stack.db_url) as session:
        results = session.scalar(select(func.count()).select_from(Result)
                                 .where(Result.job_id == job))
        distinct = session.scalar(select(func.count(func.distinct(Result.item_seq)))
                                  .where(Result.job_id == job))
        open_items = session.scalar(select(func.count()).select_from(Item).where(
            Item.job_id == job, Item.status.not_in(ItemStatus.FINAL)))
        open_chunks = session.scalar(select(func.count()).select_from(Chunk).where(
            Chunk.job_id == job, Chunk.status != ChunkStatus.DONE))
    assert (results, distinct, open_items, open_chunks) == (total, total, 0, 0)


def _victim_with_a_lease(stack: Stack, tmp_path: Path, n: int) -> tuple[Worker, str, int]:
    """A second worker on the stack, started, holding a lease on a chunk of a new job.

    Long answers keep the chunks leased for many seconds: short ones (48 tokens) were done
    in four, before a loaded machine's `submit` process had even exited."""
    victim = Worker(stack, f"victim-{uuid.uuid4().hex[:4]}")
    victim.wait_ready()
    job = _submit(stack, tmp_path, n=n, chunk=3, max_tokens=192, ask="Write a long story, "
                  "in many paragraphs, about the number {i}.")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with db.session(stack.db_url) as session:
            held = session.scalars(select(Chunk.seq).where(
                Chunk.job_id == job, Chunk.status == ChunkStatus.LEASED,
                Chunk.lease_owner.like("victim-%"))).first()
        if held is not None:
            return victim, job, held
        time.sleep(0.2)
    victim.stop()
    with db.session(stack.db_url) as session:
        owners = session.execute(select(Chunk.seq, Chunk.status, Chunk.lease_owner,
                                        Chunk.deliveries)
                                 .where(Chunk.job_id == job)).all()
    tail = victim.log.read_text(errors="replace")[-3000:]
    raise AssertionError(f"the victim never took a chunk; chunks {owners}; its log:\n{tail}")


def test_a_killed_worker_loses_nothing_and_another_finishes_its_chunk(
        engine_stacks: dict[str, Stack], tmp_path: Path) -> None:
    stack = engine_stacks["sqlite"]
    victim, job, held = _victim_with_a_lease(stack, tmp_path, n=24)
    try:
        os.killpg(victim.proc.pid, signal.SIGKILL)
        status = stack.wait_final(job, timeout=300)
    finally:
        victim.stop()
    assert status["state"] == "completed" and status["succeeded"] == 24
    _assert_exactly_once(stack, job, 24)
    with db.session(stack.db_url) as session:
        assert session.get_one(Chunk, (job, held)).deliveries >= 2


def test_engine_death_hands_chunks_back_and_the_worker_exits_non_zero(
        engine_stacks: dict[str, Stack], tmp_path: Path) -> None:
    stack = engine_stacks["sqlite"]
    victim, job, _ = _victim_with_a_lease(stack, tmp_path, n=24)
    engines = [p for p in psutil.Process(victim.proc.pid).children(recursive=True)
               if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    if not engines:
        victim.stop()
        raise AssertionError("the victim has no EngineCore child process")
    engines[0].kill()
    _expect_exit_and_completion(stack, victim, job, expected_exit=70)


def test_sigterm_finishes_or_hands_back_held_chunks_and_exits_cleanly(
        engine_stacks: dict[str, Stack], tmp_path: Path) -> None:
    stack = engine_stacks["sqlite"]
    victim, job, _ = _victim_with_a_lease(stack, tmp_path, n=24)
    victim.proc.send_signal(signal.SIGTERM)
    _expect_exit_and_completion(stack, victim, job, expected_exit=0)


def _expect_exit_and_completion(stack: Stack, victim: Worker, job: str,
                                expected_exit: int) -> None:
    """The victim exits with `expected_exit`, holding no lease; the job still completes."""
    try:
        exit_code = victim.proc.wait(timeout=120)
        with db.session(stack.db_url) as session:
            owners = session.scalars(select(Chunk.lease_owner).where(Chunk.job_id == job)).all()
        status = stack.wait_final(job, timeout=300)
    finally:
        victim.stop()
    assert exit_code == expected_exit
    assert not any(o and o.startswith("victim-") for o in owners)  # handed back, not left leased
    assert status["state"] == "completed" and status["succeeded"] == 24
    _assert_exactly_once(stack, job, 24)


def test_flushed_broker_mid_job_is_reconciled(engine_stacks: dict[str, Stack],
                                              tmp_path: Path) -> None:
    stack = engine_stacks["postgres"]
    job = _submit(stack, tmp_path, n=18, chunk=3, max_tokens=16)
    redis.Redis.from_url(stack.broker_url).flushdb()
    reconciled = stack.cli("reconcile")
    assert "enqueued again" in reconciled.stdout

    status = stack.wait_final(job, timeout=300)
    assert status["state"] == "completed" and status["succeeded"] == 18
    _assert_exactly_once(stack, job, 18)


def test_a_pickled_message_is_refused_and_nothing_runs(engine_stacks: dict[str, Stack]) -> None:
    stack = engine_stacks["sqlite"]
    log = next(stack.workdir.glob("worker-test-sqlite.log"))
    marker = f"pickled{uuid.uuid4().hex[:8]}"
    queue = queue_for(MODEL)
    with Connection(stack.broker_url) as conn:
        Producer(conn).publish(
            ([marker, 0], {}, {}), exchange=Exchange(queue, type="direct"), routing_key=queue,
            serializer="pickle",
            headers={"task": RUN_CHUNK, "id": str(uuid.uuid4()), "lang": "py",
                     "argsrepr": "", "kwargsrepr": ""})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "pickle" not in log.read_text(errors="replace"):
        time.sleep(0.5)
    text = log.read_text(errors="replace")
    assert "Refusing to deserialize untrusted content of type pickle" in text
    assert f"chunk {marker}/0" not in text and "Task nightshift.run_chunk" not in text.split(
        "Refusing to deserialize")[-1]
