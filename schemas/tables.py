"""The SQL tables: the source of truth for every job, item, chunk and result.

Items and chunks are keyed by (job_id, seq) so that the producer can write them in
bulk without reading ids back, and a broker message is just (job_id, chunk seq).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The tables' values, importable from here too.
from schemas.states import ChunkStatus, ItemStatus, JobState, Quality, WorkerState  # noqa: F401


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(512))
    spec: Mapped[dict[str, Any]]
    # Where the items came from and in which format (jsonl, openai, csv, documents).
    source: Mapped[str] = mapped_column(Text, default="")
    input_format: Mapped[str] = mapped_column(String(16), default="jsonl")
    total: Mapped[int] = mapped_column(Integer, default=0)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    # Chunks sent to the broker so far, in seq order (see Settings.window).
    enqueued: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Overnight scheduling: not enqueued before `start_at`; what is open at `deadline` is
    # cancelled; among queued jobs, higher `priority` runs first.
    start_at: Mapped[datetime | None]
    deadline: Mapped[datetime | None]
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


_HAS_KEY = text("content_key IS NOT NULL")
_TWIN = text("same_as IS NOT NULL")


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        Index("ix_items_job_key", "job_id", "key", unique=True),
        Index("ix_items_job_chunk", "job_id", "chunk"),
        # No index on status: job_counts holds the counts, and each status change (claim,
        # release, result write) would pay for one; cancelling walks the job's items. On
        # PostgreSQL the table's pages are half empty, so those changes are HOT updates
        # (migration 0007).
        # Only rows whose answer may be shared have content keys (schemas.dedup).
        Index("ix_items_content_key", "content_key", sqlite_where=_HAS_KEY,
              postgresql_where=_HAS_KEY),
        # A result write finds the items waiting for it (schemas.dedup.share_results).
        Index("ix_items_twins", "job_id", "same_as", sqlite_where=_TWIN, postgresql_where=_TWIN),
    )

    # Per-item tables (items, results, attempts, pieces) have no foreign key to jobs
    # (migration 0008): a submit writes its items before its job row, which makes them
    # visible, and workers write results with the job's row locked.
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The input's own id (`id`, `custom_id`, a file name); unique within its job.
    key: Mapped[str] = mapped_column(String(512))
    chunk: Mapped[int] = mapped_column(Integer)
    # What the worker sends: {"messages": [...]} or {"prompt": "..."}, plus overrides.
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.PENDING)
    # Worker deaths this item was in flight for, run alone (worker.chunks: poison items).
    deaths: Mapped[int] = mapped_column(Integer, server_default="0")
    # Result writes that finished this item while it ran. The write that moves it counts
    # the item's status change itself, and the counting triggers stand down (schemas.db.counters).
    writes: Mapped[int] = mapped_column(Integer, server_default="0")
    # The attempts earlier runs of this item made (`nightshift retry`): a new run numbers
    # its attempts after them, and the ledger keeps both.
    attempted: Mapped[int] = mapped_column(Integer, server_default="0")
    # A document's content and everything that decides its answer (model, prompt, sampling,
    # checks), hashed: equal keys get one answer. `same_as`: the item of this job whose
    # result this one takes instead of running.
    content_key: Mapped[str | None] = mapped_column(String(64))
    same_as: Mapped[int | None] = mapped_column(Integer)


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (Index("ix_chunks_status_lease", "status", "lease_expires_at"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ChunkStatus.PENDING)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    # How many times a worker has taken this chunk; bounds poison chunks.
    deliveries: Mapped[int] = mapped_column(Integer, default=0)


class Result(Base):
    """One final outcome per item, written by upsert so a re-run chunk adds no rows."""

    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    item_seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(256))
    probabilities: Mapped[dict[str, Any] | None]
    # All n samples when a job asks for more than one; `output` is the first.
    samples: Mapped[list[str] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    # The attempt whose answer this is (the best one when none passed), its verdict and
    # each check's verdict [{"name", "passed", "score", "reason"}], and reference metrics.
    attempt: Mapped[int | None] = mapped_column(Integer)
    quality: Mapped[str | None] = mapped_column(String(16))
    checks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None]
    # A document longer than the context: how many pieces it was split into (see Piece).
    pieces: Mapped[int | None] = mapped_column(Integer)
    # The prompt exactly as the engine saw it, and the sampling that produced the output.
    prompt: Mapped[str | None] = mapped_column(Text)
    sampling: Mapped[dict[str, Any] | None]
    worker: Mapped[str | None] = mapped_column(String(128))
    # PostgreSQL's clock fills it in a chunk's COPY (migration 0017); SQLite's writers
    # give it.
    created_at: Mapped[datetime] = mapped_column(default=utcnow,
                                                 server_default=func.statement_timestamp())


class Attempt(Base):
    """The ledger: every answer the engine gave for an item, checked, with why it was
    asked again. Retries after a lost worker are not attempts: they leave no row."""

    __tablename__ = "attempts"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    item_seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    # 0: the item's own answer (a document's final reduce); n > 0: its piece n.
    piece: Mapped[int] = mapped_column(Integer, primary_key=True, default=0, server_default="0")
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The ladder step that produced it: "first", "resample", "feedback", "constrain", ...
    step: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str | None] = mapped_column(Text)
    sampling: Mapped[dict[str, Any] | None]
    output: Mapped[str | None] = mapped_column(Text)
    samples: Mapped[list[str] | None] = mapped_column(JSON)
    label: Mapped[str | None] = mapped_column(String(256))
    probabilities: Mapped[dict[str, Any] | None]
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    checks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    # Why the next attempt was made (the failed checks' reasons), None for the last.
    next_reason: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Piece(Base):
    """A part of a document longer than the model's context: a map piece (a span of the
    document's text) or a reduce step that combined other parts' answers."""

    __tablename__ = "pieces"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    item_seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    piece: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # "map" or "reduce"
    # map: the piece's span of the document's text (character offsets).
    start_char: Mapped[int | None] = mapped_column(Integer)
    end_char: Mapped[int | None] = mapped_column(Integer)
    # reduce: the parts it combined.
    inputs: Mapped[list[int] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(256))
    probabilities: Mapped[dict[str, Any] | None]
    quality: Mapped[str | None] = mapped_column(String(16))
    checks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobCount(Base):
    """Per job and status: how many items have it, and the tokens of the results with it.
    Kept by database triggers, and by the bulk writers for what they insert or finish:
    submit and the result write (schemas.db.counters)."""

    __tablename__ = "job_counts"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    items: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Worker(Base):
    """One `nightshift worker` process: the model it hosts and when it last said it was
    alive (worker.presence). A worker killed without a shutdown keeps `running` here, and
    its heartbeat goes stale."""

    __tablename__ = "workers"

    # The worker's lease owner (name:pid:random), as chunks.lease_owner and results.worker hold it.
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))  # --name, else the host name
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # As the worker was started with it (--model, NIGHTSHIFT_MODEL), as jobs name it.
    model: Mapped[str] = mapped_column(String(512))
    slots: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=WorkerState.RUNNING)
    # On the database's clock (schemas.db.clock), as leases are.
    started_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime]
    # Completion tokens of the results it wrote, per second, over the last minute.
    tokens_per_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class ApiKey(Base):
    """A key of `nightshift serve`, kept as its SHA-256: the key itself is shown once, when
    it is created. An admin key sees every batch; any other only its own files and batches."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Review(Base):
    """A person's verdict on an item's kept answer (the dashboard's review queue): accepted,
    rejected, or corrected, when `correction` (a label, or edited text) is its final answer
    in every export. One per item; a later verdict replaces it."""

    __tablename__ = "reviews"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    item_seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    verdict: Mapped[str] = mapped_column(String(16))
    correction: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    # The name of the API key that logged in to give it.
    reviewer: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Login(Base):
    """A browser logged in to the dashboard with an API key: the cookie's random token,
    kept as its SHA-256, as keys are. It ends at `expires_at`, at logout, or with its key."""

    __tablename__ = "logins"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class StoredFile(Base):
    """A file uploaded to `nightshift serve`, kept in the files directory under `name`,
    which is made from its id: nothing a client sends becomes a path."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner_created", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(32))  # the api_keys.id that uploaded it
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    """A batch of OpenAI's Batch API: its job (none when its input was refused), and what
    OpenAI's Batch object carries that a job does not."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_owner_created", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    input_file_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    # OpenAI's `metadata` (SQLAlchemy keeps that attribute name for itself).
    labels: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    # Why the input was refused: OpenAI's `errors.data`, each naming its line.
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    failed_at: Mapped[datetime | None]
    cancelling_at: Mapped[datetime | None]
    # The output and error files' sizes in bytes as last counted, and the reviews they
    # were counted under (producer.server.batches.file_size).
    file_sizes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
