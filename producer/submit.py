"""Create a job: validate every row, write job, items and chunks in one transaction, enqueue.

A job is all or nothing: a bad row (reported with its line number) rolls the whole
job back, unless the caller asked to skip invalid rows. Rows are written in
batches as they stream in, so memory stays flat whatever the file's size.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from producer import broker, readers
from producer.schedule import Schedule
from schemas import db
from schemas.errors import InputError
from schemas.settings import Settings
from schemas.spec import JobSpec
from schemas.tables import Chunk, Item, Job, JobState, utcnow
from worker import models
from worker.app import message_priority

BATCH = 2_000
SHOWN_ERRORS = 20


@dataclass
class Submitted:
    job_id: str
    items: int
    chunks: int
    invalid: list[readers.RowError] = field(default_factory=list)
    invalid_count: int = 0
    skipped: list[readers.Skipped] = field(default_factory=list)
    scheduled: bool = False


def submit(settings: Settings, spec: JobSpec, path: Path, fmt: str = "auto",
           skip_invalid: bool = False,
           on_invalid: Callable[[readers.RowError], None] | None = None,
           on_skipped: Callable[[readers.Skipped], None] | None = None,
           schedule: Schedule | None = None) -> Submitted:
    """With a `schedule` whose start is still ahead, the job is stored `scheduled` and
    nothing is enqueued: reconcile enqueues it once its start time has passed."""
    schedule = schedule or Schedule()
    held = schedule.waits(utcnow())
    models.check_name(spec.model)
    db.upgrade(settings.database_url)
    broker.check_reachable(settings.broker_url)
    input_format = readers.detect_format(path) if fmt == "auto" else fmt
    job_id = uuid.uuid4().hex
    result = Submitted(job_id, 0, 0)
    with db.session(settings.database_url) as s, s.begin():
        s.add(Job(id=job_id, state=JobState.SCHEDULED if held else JobState.QUEUED,
                  start_at=schedule.start_at, deadline=schedule.deadline,
                  priority=schedule.priority, kind=spec.kind, model=spec.model,
                  spec=spec.model_dump(mode="json"), source=str(path),
                  input_format=input_format))
        s.flush()
        batch: list[dict[str, Any]] = []
        seen: set[str] = set()
        for row in readers.read(path, input_format, spec.template):
            if isinstance(row, readers.Skipped):  # unreadable documents leave the job standing
                result.skipped.append(row)
                if on_skipped:
                    on_skipped(row)
                continue
            if isinstance(row, readers.Row) and row.key in seen:
                row = readers.RowError(row.line, f"duplicate id {row.key!r}")
            if isinstance(row, readers.RowError):
                result.invalid_count += 1
                if len(result.invalid) < SHOWN_ERRORS:
                    result.invalid.append(row)
                if on_invalid:
                    on_invalid(row)
                continue
            seen.add(row.key)
            seq = result.items
            batch.append({"job_id": job_id, "seq": seq, "key": row.key,
                          "chunk": seq // spec.chunk_size, "payload": row.payload})
            result.items += 1
            if len(batch) >= BATCH:
                s.execute(insert(Item), batch)
                batch.clear()
        if batch:
            s.execute(insert(Item), batch)
        _refuse_if_invalid(path, result, skip_invalid)
        result.chunks = -(-result.items // spec.chunk_size)
        sizes = [min(spec.chunk_size, result.items - c * spec.chunk_size)
                 for c in range(result.chunks)]
        s.execute(insert(Chunk), [{"job_id": job_id, "seq": c, "size": n}
                                  for c, n in enumerate(sizes)])
        s.get_one(Job, job_id).total, s.get_one(Job, job_id).chunks = result.items, result.chunks
    result.scheduled = held
    if not held:
        broker.enqueue(settings.broker_url, spec.model, job_id, range(result.chunks),
                       priority=message_priority(schedule.priority))
    return result


def _refuse_if_invalid(path: Path, result: Submitted, skip_invalid: bool) -> None:
    if result.invalid_count and not skip_invalid:
        first = result.invalid[0]
        more = f" (and {result.invalid_count - 1} more invalid rows)" \
            if result.invalid_count > 1 else ""
        raise InputError(f"{path}: {first}{more}; no job was created "
                         "(fix the rows, or pass --skip-invalid to leave them out)")
    if result.items == 0:
        unreadable = f" ({len(result.skipped)} unreadable documents)" if result.skipped else ""
        raise InputError(f"{path}: no valid rows{unreadable}; no job was created")
