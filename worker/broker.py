"""The broker contract both sides share: a "run chunk" message names ids only, (job id,
chunk seq), as JSON, one per chunk, on its model's queue, at its job's priority.

A job keeps at most `Settings.window` messages on the broker; each chunk that finishes
sends the job's next one (`next_chunk`, in the finishing chunk's transaction). A job
submitted behind a big one of the same model and priority so waits for a window's worth
of the big one's chunks, not for all of them: jobs take turns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from kombu import Connection
from kombu.exceptions import ChannelError, OperationalError
from sqlalchemy import select, update

from schemas.errors import BrokerUnreachable
from schemas.settings import redact
from schemas.tables import Job, JobState
from worker.app import RUN_CHUNK, app_for

MAX_PRIORITY = 9

# A submit's check, a metrics scrape and a reconcile pass must fail in seconds on a
# stalled broker, not hang (kombu's Redis sockets wait forever by default).
_BOUNDED = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0, "max_retries": 1}


def message_priority(job_priority: int) -> int:
    """A job's priority (0-9, higher runs first) as kombu's Redis message priority, where
    the lowest value is popped first. Default jobs (0) sit in the last list."""
    return MAX_PRIORITY - min(max(job_priority, 0), MAX_PRIORITY)


def queue_for(model: str) -> str:
    """Workers are grouped by model: a job only reaches workers that hold its model.

    A job with a LoRA adapter shares its base model's queue: vLLM applies adapters per
    request, so a worker with --enable-lora serves plain and adapter jobs from one engine,
    and a queue of their own would only split the model's workers in two. The rule is
    that all workers of a model run --enable-lora when any of its jobs may carry an
    adapter; one that does not fails those items, naming the option (worker.engine)."""
    return "nightshift." + re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")


@contextmanager
def _connected(broker_url: str) -> Iterator[Connection]:
    """A bounded connection; a broker it cannot reach is BrokerUnreachable, naming it."""
    try:
        with app_for(broker_url).connection_for_write(transport_options=_BOUNDED) as conn:
            yield conn
    except (OperationalError, OSError) as exc:
        raise BrokerUnreachable(f"cannot reach the broker at {redact(broker_url)}: {exc}") from None


def check_reachable(broker_url: str) -> None:
    with _connected(broker_url) as conn:
        conn.ensure_connection(max_retries=1, timeout=5)


def queue_depth(broker_url: str, model: str) -> int:
    """Messages waiting on a model's queue, over all its priority lists."""
    with _connected(broker_url) as conn:
        channel = conn.default_channel
        try:
            return int(channel.queue_declare(queue_for(model), passive=True).message_count)
        except ChannelError:  # a queue never declared holds nothing
            return 0


def enqueue(broker_url: str, model: str, job_id: str, seqs: Iterable[int], *,
            priority: int = 0) -> int:
    """Publish one message per chunk over a single connection; returns how many."""
    app = app_for(broker_url)
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for seq in seqs:
                app.send_task(RUN_CHUNK, args=[job_id, seq], queue=queue_for(model),
                              producer=producer, priority=priority)
                sent += 1
    except (OperationalError, OSError) as exc:
        raise BrokerUnreachable(
            f"lost the broker at {redact(broker_url)} after {sent} chunk message(s): {exc}; "
            "the job is safe in SQL, run `nightshift reconcile` once the broker is back"
        ) from None
    return sent


def first_window(chunks: int, window: int) -> range:
    return range(min(chunks, window))


def next_chunk(conn: sa.Connection, job_id: str) -> tuple[str, int, int] | None:
    """Count the job's next chunk as sent; (model, seq, priority) to send it with after the
    transaction commits, or None when every chunk has been sent or the job has ended."""
    moved = conn.execute(update(Job).where(Job.id == job_id, Job.enqueued < Job.chunks,
                                           Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
                         .values(enqueued=Job.enqueued + 1))
    if not moved.rowcount:
        return None
    model, enqueued, priority = conn.execute(select(Job.model, Job.enqueued, Job.priority)
                                             .where(Job.id == job_id)).one()
    return model, enqueued - 1, priority
