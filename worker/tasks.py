"""The Celery task and the one runtime (engine host) of this worker process."""

from __future__ import annotations

import logging
import os
import signal

from celery.exceptions import Reject

from worker.app import RUN_CHUNK, celery_app
from worker.chunks import Runtime, run_chunk
from worker.engine import EngineDead

log = logging.getLogger(__name__)

# The one piece of process-wide state: set by `nightshift worker` before consuming.
runtime: Runtime | None = None


@celery_app.task(name=RUN_CHUNK, acks_late=True, ignore_result=True)
def run_chunk_task(job_id: str, seq: int) -> str:
    if runtime is None:
        raise RuntimeError("this process hosts no engine; start workers with `nightshift worker`")
    if not runtime.host.alive:
        # Shutting down after its engine died: the message goes back for another worker,
        # untouched (a claim here would count a delivery that never ran).
        raise Reject("this worker's engine is dead", requeue=True)
    try:
        outcome = run_chunk(runtime, str(job_id), int(seq))
    except EngineDead:
        # The chunk was handed back; stop consuming so the supervisor starts a fresh worker.
        log.error("engine died while running chunk %s/%s; shutting the worker down", job_id, seq)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    log.info("chunk %s/%s: %s", job_id, seq, outcome)
    return outcome
