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

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from producer import broker, readers
from producer.schedule import Schedule
from schemas import counters, db, dedup
from schemas.errors import InputError
from schemas.settings import Settings
from schemas.spec import JobSpec
from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus, Job, JobState, utcnow
from worker import models
from worker.app import message_priority

BATCH = 5_000
ITEM_COLUMNS = ("job_id", "seq", "key", "chunk", "payload", "status", "tries", "content_key")
CHUNK_COLUMNS = ("job_id", "seq", "size", "status", "deliveries")
_encode = msgspec.json.Encoder().encode
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
    # Items answered by an earlier job's result of the same document (--reuse-results).
    reused: int = 0


def submit(settings: Settings, spec: JobSpec, path: Path, fmt: str = "auto",
           skip_invalid: bool = False,
           on_invalid: Callable[[readers.RowError], None] | None = None,
           on_skipped: Callable[[readers.Skipped], None] | None = None,
           schedule: Schedule | None = None, reuse_results: bool = False) -> Submitted:
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
        items = _Items(s, job_id, spec, result, on_invalid)
        for row in readers.read(path, input_format, spec.template):
            if isinstance(row, readers.Skipped):  # unreadable documents leave the job standing
                result.skipped.append(row)
                if on_skipped:
                    on_skipped(row)
                continue
            items.add(row)
        items.flush()
        counters.add(s.connection(), job_id, ItemStatus.PENDING, result.items)
        _refuse_if_invalid(path, result, skip_invalid)
        if items.keyed:  # documents: each one answered once
            dedup.mark_duplicates(s.connection(), job_id)
            if reuse_results:
                result.reused = dedup.reuse_earlier(s.connection(), job_id)
        result.chunks = -(-result.items // spec.chunk_size)
        db.insert_rows(s.connection(), Chunk.__table__, CHUNK_COLUMNS, [
            (job_id, c, min(spec.chunk_size, result.items - c * spec.chunk_size),
             ChunkStatus.PENDING, 0) for c in range(result.chunks)])
        job = s.get_one(Job, job_id)
        job.total, job.chunks = result.items, result.chunks
        first = broker.first_window(result.chunks, settings.window)
        job.enqueued = 0 if held else len(first)
    result.scheduled = held
    if not held:
        broker.enqueue(settings.broker_url, spec.model, job_id, first,
                       priority=message_priority(schedule.priority))
    return result


class _Items:
    """Rows in input order, written a batch at a time. A duplicate id is found by the
    items table's unique index, not by a set of every id seen (memory stays flat), and
    becomes that row's error; errors are reported in line order."""

    def __init__(self, s: Session, job_id: str, spec: JobSpec, result: Submitted,
                 on_invalid: Callable[[readers.RowError], None] | None) -> None:
        self.s, self.job_id, self.chunk_size = s, job_id, spec.chunk_size
        self.fingerprint = dedup.fingerprint(spec)
        self.keyed = False
        self.result, self.on_invalid = result, on_invalid
        self.entries: list[readers.Row | readers.RowError] = []

    def add(self, entry: readers.Row | readers.RowError) -> None:
        self.entries.append(entry)
        if len(self.entries) >= BATCH:
            self.flush()

    def flush(self) -> None:
        entries, self.entries = self.entries, []
        try:
            with self.s.begin_nested():
                self._insert(entries)
        except IntegrityError:
            entries = self._duplicates_marked(entries)
            self._insert(entries)
        for entry in entries:
            if isinstance(entry, readers.RowError):
                self._invalid(entry)
            else:
                self.result.items += 1

    def _insert(self, entries: list[readers.Row | readers.RowError]) -> None:
        first, size, job_id = self.result.items, self.chunk_size, self.job_id
        rows = [row for row in entries if isinstance(row, readers.Row)]
        keys = [dedup.content_key(self.fingerprint, row.payload) for row in rows]
        self.keyed = self.keyed or any(keys)
        db.insert_rows(self.s.connection(), Item.__table__, ITEM_COLUMNS, [
            (job_id, seq, row.key, seq // size, _encode(row.payload).decode(),
             ItemStatus.PENDING, 0, key)
            for (seq, row), key in zip(enumerate(rows, start=first), keys, strict=True)])

    def _duplicates_marked(self, entries: list[readers.Row | readers.RowError]
                           ) -> list[readers.Row | readers.RowError]:
        keys = {row.key for row in entries if isinstance(row, readers.Row)}
        taken = set(self.s.scalars(select(Item.key).where(Item.job_id == self.job_id,
                                                          Item.key.in_(keys))))
        marked: list[readers.Row | readers.RowError] = []
        for entry in entries:
            if isinstance(entry, readers.Row) and entry.key in taken:
                entry = readers.RowError(entry.line, f"duplicate id {entry.key!r}")
            elif isinstance(entry, readers.Row):
                taken.add(entry.key)
            marked.append(entry)
        return marked

    def _invalid(self, error: readers.RowError) -> None:
        self.result.invalid_count += 1
        if len(self.result.invalid) < SHOWN_ERRORS:
            self.result.invalid.append(error)
        if self.on_invalid:
            self.on_invalid(error)


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
