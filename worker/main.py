"""`nightshift worker`: load the engine once, then consume chunk messages for its model."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import uuid

from celery.signals import setup_logging

from quality import registry
from schemas import db
from schemas.errors import first_line
from schemas.settings import Settings, redact
from worker import leases, logs, metrics, models, presence, tasks
from worker.app import broker_settings, celery_app
from worker.broker import queue_for
from worker.chunks import Runtime, rehearse
from worker.engine import EngineHost, EngineOptions

log = logging.getLogger(__name__)

EXIT_ENGINE_DEAD = 70


def run_worker(settings: Settings, options: EngineOptions, *, slots: int,
               loglevel: str = "INFO", name: str | None = None, metrics_port: int = 0,
               quiet: bool = False) -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit code. Logging is set up by the
    caller (worker.logs, before vLLM is imported), else here as plain text; `quiet` drops
    Celery's start-up banner (not a log record) from stdout."""
    if not logging.getLogger().handlers:
        logs.configure("text", loglevel)
    setup_logging.connect(_keep_logging)
    bound_idle_transactions(settings.lease_seconds)
    db.check_reachable(settings.database_url)
    checks = registry.installed()  # a broken registration stops the start (exit 2)
    log.info("checks registered here: %s", ", ".join(sorted(checks)) or "none")
    model_path = models.resolve(settings.model, settings.model_dir)
    owner = f"{name or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    log.info("loading %s (%s) for %s, database %s", settings.model, model_path, owner,
             redact(settings.database_url))
    host = EngineHost.start(model_path, options, stall_seconds=settings.stall_seconds)
    if metrics_port:
        metrics.start(metrics_port, settings.broker_url, settings.model, host)
    tasks.runtime = _runtime(settings, host, owner)
    heartbeat = tasks.runtime.heartbeat
    celery_app.conf.update(broker_settings(settings.broker_url))
    stop = threading.Event()
    threading.Thread(target=_reconcile_every, args=(settings, stop), daemon=True,
                     name="reconcile").start()
    # Threads, not prefork: vLLM's engine core is a spawned child that daemonic pool
    # processes cannot start; `slots` chunks share the one engine, so it never drains.
    argv = ["worker", "--pool=threads", f"--concurrency={slots}", "-Q",
            queue_for(settings.model), "-n", f"{owner.replace(':', '-')}@%h",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"]
    argv = ["--quiet", *argv] if quiet else argv  # a global option: before the subcommand
    # Start-up's objects (vLLM, torch, Celery: most of a million) stay for the process's
    # life: kept out of the collector, a full collection no longer walks them all, which
    # took about a quarter of a chunk's result write.
    gc.freeze()
    seen = presence.Presence(settings.database_url, owner, settings.model, slots,
                             name=name).start()
    code: int | str | None = 0
    try:
        celery_app.worker_main(argv)
    except SystemExit as exc:
        code = exc.code  # Celery's own: non-zero after an error it cannot recover from
    finally:
        seen.stop()
        stop.set()
        heartbeat.stop()
        alive = host.alive
        host.stop()
    if not alive:
        return EXIT_ENGINE_DEAD  # a dead engine must read as one, whatever Celery says
    return code if isinstance(code, int) else int(bool(code))


def _runtime(settings: Settings, host: EngineHost, owner: str) -> Runtime:
    """What every chunk this worker runs shares, its database way rehearsed once."""
    heartbeat = leases.Heartbeat(settings.database_url, owner, settings.lease_seconds,
                                 healthy=host.progressing,
                                 on_lost=lambda lease: host.abort(
                                     lease.tag, f"lost the lease on chunk {lease.tag}"))
    runtime = Runtime(host, settings.database_url, owner, heartbeat,
                      broker_url=settings.broker_url)
    try:
        rehearse(runtime)
    except Exception as exc:  # a head start, no more: the chunks themselves will tell
        log.warning("could not rehearse a chunk before taking messages, the first ones "
                    "start cold: %s", first_line(exc))
    return runtime


def bound_idle_transactions(lease_seconds: float) -> None:
    """A worker paused inside a transaction (SIGSTOP, a frozen VM) would hold its rows'
    locks, and every other worker's claims and writes would wait for it: PostgreSQL ends
    such a session after two leases. Its work is the lease's to redo, and a write from it
    is fenced anyway. Set before the first connection: libpq reads PGOPTIONS then."""
    bound = f"-c idle_in_transaction_session_timeout={int(max(lease_seconds * 2, 10) * 1000)}"
    os.environ["PGOPTIONS"] = f"{os.environ.get('PGOPTIONS', '')} {bound}".strip()


def _keep_logging(**_: object) -> None:
    """Celery leaves logging alone when a receiver handles its setup_logging signal."""


def _reconcile_every(settings: Settings, stop: threading.Event) -> None:
    """Workers heal lost messages themselves: no one has to run `nightshift reconcile`."""
    from worker.reconcile import reconcile

    # Every half lease: a dead worker's chunk runs again within 1.5 leases (45 s by default).
    while not stop.wait(settings.lease_seconds / 2):
        try:
            done = reconcile(settings.database_url, settings.broker_url,
                             window=settings.window)
            if done.started or done.expired:
                log.info("schedule: started %s, cancelled past deadline %s",
                         done.started, done.expired)
            if any(done.resent.values()):
                log.warning("reconcile enqueued lost chunks again: %s", done.resent)
        except Exception:
            log.exception("reconcile failed; trying again later")
