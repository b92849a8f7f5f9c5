"""Sending "run chunk" messages: ids only, JSON, one per chunk, on the model's queue."""

from __future__ import annotations

from collections.abc import Iterable

from kombu.exceptions import OperationalError

from schemas.errors import BrokerUnreachable
from schemas.settings import redact
from worker.app import RUN_CHUNK, app_for, queue_for


def check_reachable(broker_url: str) -> None:
    app = app_for(broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except (OperationalError, OSError) as exc:
        raise BrokerUnreachable(f"cannot reach the broker at {redact(broker_url)}: {exc}") from None


def enqueue(broker_url: str, model: str, job_id: str, seqs: Iterable[int],
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
