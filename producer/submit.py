"""Create a job: validate every row, write its items, then the job and its chunks, enqueue.

A job is all or nothing: a bad row (reported with its line number) leaves no job,
unless the caller asked to skip invalid rows. The whole input is read first, its rows
spooled to a temporary file (memory stays flat whatever the file's size) and keyed by
their prompts' leading parts; then they are written in batches, each in its chunk of the
prefix-grouped order (producer.order). Nothing is written while the input is read: a
folder of PDFs parsed for minutes holds no lock. On SQLite each batch is a transaction
of its own, so workers' writes and heartbeats go in between (_Loading).
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from producer import documents, order, readers
from producer.schedule import Schedule
from schemas import db, dedup
from schemas.db import bulk, counters
from schemas.errors import InputError
from schemas.settings import Settings
from schemas.spec import JobSpec
from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus, Job, JobCount, JobState, utcnow
from worker import broker, models
from worker.broker import message_priority

log = logging.getLogger(__name__)

BATCH = 5_000
# Items of a failed submit removed per transaction (SQLite).
DISCARD_BATCH = 50_000
ITEM_COLUMNS = ("job_id", "seq", "key", "chunk", "payload", "status", "deaths", "content_key")
CHUNK_COLUMNS = ("job_id", "seq", "size", "status", "deliveries")
# Read rows kept in memory up to this size, then in a temporary file.
SPOOL_IN_MEMORY = 32 << 20
_encode = msgspec.json.Encoder().encode
# A batch of read rows as spooled: (line, id, payload as JSON, content key).
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(list[tuple[int, str, str, str | None]]).decode
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


def submit(settings: Settings, spec: JobSpec, path: Path, *, fmt: str = "auto",
           skip_invalid: bool = False,
           on_invalid: Callable[[readers.RowError], None] | None = None,
           on_skipped: Callable[[readers.Skipped], None] | None = None,
           schedule: Schedule | None = None, reuse_results: bool = False,
           max_document_bytes: int = documents.MAX_BYTES,
           with_job: Callable[[Session, str], None] | None = None) -> Submitted:
    """With a `schedule` whose start is still ahead, the job is stored `scheduled` and
    nothing is enqueued: reconcile enqueues it once its start time has passed. A document
    file over `max_document_bytes` is skipped unread. `with_job` adds rows that stand or
    fall with the job (a Batch API batch) in the transaction that makes it visible."""
    schedule = schedule or Schedule()
    held = schedule.waits(utcnow())
    models.check_name(spec.model)
    db.upgrade(settings.database_url)
    broker.check_reachable(settings.broker_url)
    input_format = readers.detect_format(path) if fmt == "auto" else fmt
    job_id = uuid.uuid4().hex
    result = Submitted(job_id, 0, 0)
    with (_Loading(settings.database_url, job_id) as loading,
          tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool):
        items = _Items(loading, spool, job_id, spec, result, on_invalid)
        _read(items, readers.read(path, input_format, spec.template,
                                  max_document_bytes=max_document_bytes), on_skipped)
        _refuse_if_invalid(path, result, skip_invalid)  # before a row is written
        items.write()
        _refuse_if_invalid(path, result, skip_invalid)  # duplicate ids
        _refuse_if_empty(path, result)
        first = broker.first_window(result.chunks, settings.window)
        job = Job(id=job_id, state=JobState.SCHEDULED if held else JobState.QUEUED,
                  start_at=schedule.start_at, deadline=schedule.deadline,
                  priority=schedule.priority, kind=spec.kind, model=spec.model,
                  spec=spec.model_dump(mode="json"), source=str(path),
                  input_format=input_format, total=result.items, chunks=result.chunks,
                  enqueued=0 if held else len(first))
        with loading.last() as session:
            _write_job(session, job, spec, result, keyed=items.keyed,
                       reuse_results=reuse_results)
            if with_job is not None:
                with_job(session, job_id)
    result.scheduled = held
    if not held:
        broker.enqueue(settings.broker_url, spec.model, job_id, first,
                       priority=message_priority(schedule.priority))
    return result


def _read(items: _Items, rows: Iterator[readers.Row | readers.RowError | readers.Skipped],
          on_skipped: Callable[[readers.Skipped], None] | None) -> None:
    """Every row into the job's items; unreadable documents are skipped and leave the job
    standing."""
    for row in rows:
        if isinstance(row, readers.Skipped):
            items.result.skipped.append(row)
            if on_skipped:
                on_skipped(row)
            continue
        items.add(row)


def _write_job(session: Session, job: Job, spec: JobSpec, result: Submitted, *, keyed: bool,
               reuse_results: bool) -> None:
    """The job after its items, then its counts and its chunks; keyed items (identical
    requests) are each answered once, and earlier jobs' answers taken if asked for."""
    session.add(job)
    session.flush()  # the job first: its chunks' foreign key
    conn = session.connection()
    counters.add(conn, job.id, ItemStatus.PENDING, result.items)
    if keyed:
        dedup.mark_duplicates(conn, job.id)
        if reuse_results:
            result.reused = dedup.reuse_earlier(conn, job.id)
    bulk.insert_rows(conn, Chunk.__table__, CHUNK_COLUMNS, [
        (job.id, c, min(spec.chunk_size, result.items - c * spec.chunk_size),
         ChunkStatus.PENDING, 0) for c in range(result.chunks)])


class _Loading:
    """The transactions of one submit. The job's items go first, a batch at a time; the
    job itself, its counts and its chunks last, in one short transaction: until it
    commits no worker, reconcile or status sees the job (items have no foreign key to
    it). On SQLite each batch commits on its own, and a submit that fails removes the
    items it wrote. On PostgreSQL, where no writer waits for another's transaction to
    end, it is all one transaction, which a failure rolls back."""

    def __init__(self, url: str, job_id: str) -> None:
        self.url, self.job_id = url, job_id
        self.whole: Session | None = None
        if db.engine_for(url).dialect.name != "sqlite":
            self.whole = db.session(url)
            self.whole.begin()

    def __enter__(self) -> _Loading:
        return self

    def __exit__(self, kind: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if self.whole is not None:
            self.whole.close()  # rolled back unless `last` committed it
        elif kind is not None:
            self._discard()

    @contextmanager
    def batch(self) -> Iterator[Session]:
        """A batch's transaction (SQLite), or a savepoint in the whole one."""
        if self.whole is not None:
            with self.whole.begin_nested():
                yield self.whole
            return
        with db.session(self.url) as session, session.begin():
            yield session

    @contextmanager
    def last(self) -> Iterator[Session]:
        """The transaction that makes the job visible."""
        if self.whole is not None:
            yield self.whole
            self.whole.commit()
            return
        with db.session(self.url) as session, session.begin():
            yield session

    def _discard(self) -> None:
        """The items of a job that was never written, removed a range at a time. Failing
        here (the database gone) must not hide why the submit failed: a line, no more."""
        try:
            self._delete_items()
        except Exception as exc:
            log.warning("could not remove the items of refused job %s: %s", self.job_id, exc)

    def _delete_items(self) -> None:
        with db.reader(self.url) as session:
            top = session.scalar(select(func.max(Item.seq)).where(Item.job_id == self.job_id))
        for first in range(0, -1 if top is None else top + 1, DISCARD_BATCH):
            with db.session(self.url) as session, session.begin():
                session.execute(delete(Item).where(Item.job_id == self.job_id, Item.seq >= first,
                                                   Item.seq < first + DISCARD_BATCH))
        with db.session(self.url) as session, session.begin():  # what the delete triggers counted
            session.execute(delete(JobCount).where(JobCount.job_id == self.job_id))


class _Items:
    """Rows in input order, read first and written once all are in (a spool file, not
    memory: a million rows stay under a few tens of MB), so that each can be given its
    chunk in the prefix-grouped order (producer.order). A duplicate id is found by the
    items table's unique index as the rows are written, not by a set of every id seen,
    and becomes that row's error; the errors shown are in line order."""

    def __init__(self, loading: _Loading, spool: IO[bytes], job_id: str, spec: JobSpec,
                 result: Submitted, on_invalid: Callable[[readers.RowError], None] | None
                 ) -> None:
        self.loading, self.spool = loading, spool
        self.job_id, self.chunk_size = job_id, spec.chunk_size
        self.spec, self.fingerprint = spec, dedup.fingerprint(spec)
        self.keyed = False
        self.result, self.on_invalid = result, on_invalid
        self.keys = order.Keys()
        self.rows: list[tuple[int, str, str, str | None]] = []

    def add(self, entry: readers.Row | readers.RowError) -> None:
        if isinstance(entry, readers.RowError):
            self._invalid(entry)
            return
        body = _encode(entry.payload)
        key = dedup.content_key(self.fingerprint, self.spec, entry.payload, body)
        self.keyed = self.keyed or key is not None
        self.keys.add(entry.payload)
        self.rows.append((entry.line, entry.key, body.decode(), key))
        if len(self.rows) >= BATCH:
            self._spill()

    def _spill(self) -> None:
        blob = _pack(self.rows)
        self.spool.write(len(blob).to_bytes(8, "little") + blob)
        self.rows = []

    def write(self) -> None:
        """Every row read, into the items table a batch at a time; returns once all are."""
        if self.rows:
            self._spill()
        read = len(self.keys)
        grouped = self.keys.chunks(self.chunk_size)
        self.keys = order.Keys()
        self.spool.seek(0)
        position = 0
        while header := self.spool.read(8):
            rows = _unpack(self.spool.read(int.from_bytes(header, "little")))
            chunks = (None if grouped is None
                      else grouped[position:position + len(rows)].tolist())
            position += len(rows)
            self._write_batch(rows, chunks)
        self.result.chunks = -(-(read if grouped is not None else self.result.items)
                               // self.chunk_size)
        self.result.invalid.sort(key=lambda error: error.line)

    def _write_batch(self, rows: list[tuple[int, str, str, str | None]],
                     chunks: list[int] | None) -> None:
        try:
            with self.loading.batch() as session:
                self._insert(session, rows, chunks)
        except IntegrityError:
            with self.loading.batch() as session:
                rows, chunks = self._duplicates_dropped(session, rows, chunks)
                self._insert(session, rows, chunks)
        self.result.items += len(rows)

    def _insert(self, session: Session, rows: list[tuple[int, str, str, str | None]],
                chunks: list[int] | None) -> None:
        """Rows numbered on from those already written; in the input's chunks (`chunks`
        None) or in the grouped ones."""
        first, size, job_id = self.result.items, self.chunk_size, self.job_id
        seqs = range(first, first + len(rows))
        cut = [seq // size for seq in seqs] if chunks is None else chunks
        bulk.insert_rows(session.connection(), Item.__table__, ITEM_COLUMNS, [
            (job_id, seq, key, chunk, payload, ItemStatus.PENDING, 0, content)
            for seq, chunk, (_, key, payload, content) in zip(seqs, cut, rows, strict=True)])

    def _duplicates_dropped(self, session: Session, rows: list[tuple[int, str, str, str | None]],
                            chunks: list[int] | None
                            ) -> tuple[list[tuple[int, str, str, str | None]], list[int] | None]:
        keys = {row[1] for row in rows}
        taken = set(session.scalars(select(Item.key).where(Item.job_id == self.job_id,
                                                           Item.key.in_(keys))))
        kept: list[int] = []
        for i, (line, key, _, _) in enumerate(rows):
            if key in taken:
                self._invalid(readers.RowError(line, f"duplicate id {key!r}"))
            else:
                taken.add(key)
                kept.append(i)
        return [rows[i] for i in kept], None if chunks is None else [chunks[i] for i in kept]

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


def _refuse_if_empty(path: Path, result: Submitted) -> None:
    if result.items == 0:
        unreadable = f" ({len(result.skipped)} unreadable documents)" if result.skipped else ""
        raise InputError(f"{path}: no valid rows{unreadable}; no job was created")
