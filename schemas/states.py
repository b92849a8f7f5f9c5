"""The states of jobs, items, chunks, answers and workers: plain constants, importable
without SQLAlchemy (a command that only reads starts faster)."""

from datetime import timedelta


class JobState:
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    FINAL = (COMPLETED, CANCELLED, FAILED)


class Quality:
    """How an answer measured against the job's checks (None when the job has none)."""

    PASSED = "passed"
    FAILED = "failed"
    NEEDS_REVIEW = "needs_review"


class ReviewVerdict:
    """A person's review of an answer (schemas.tables.Review)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CORRECTED = "corrected"
    ALL = (ACCEPTED, REJECTED, CORRECTED)


class ItemStatus:
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = (SUCCEEDED, FAILED, CANCELLED)


class ChunkStatus:
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"


class WorkerState:
    """A worker's state as it last wrote it; a running one is live while its last heartbeat
    is under `LIVE` old (worker.presence)."""

    LIVE = timedelta(minutes=5)

    RUNNING = "running"
    STOPPED = "stopped"


def minutes(window: timedelta = WorkerState.LIVE) -> str:
    """A window as people read it: "5 min"."""
    return f"{window.total_seconds() / 60:g} min"
