"""The Celery app, as the worker runs it and the producer sends with it.

Only JSON crosses the broker (a pickled message is refused before anything runs);
a message is acknowledged after its chunk ran (acks late), one at a time
(prefetch 1). What a message says and where it goes: worker.broker.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

from celery import Celery

RUN_CHUNK = "nightshift.run_chunk"

CONFIG = dict(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    worker_hijack_root_logger=False,
    worker_send_task_events=True,
    task_send_sent_event=True,
    # Leases in SQL bound a lost chunk's delay; Redis's own redelivery is only a backstop.
    # Ten priority lists per queue (Redis has no priorities of its own: kombu keeps one list
    # per step and pops the lowest step first), so every job priority 0-9 is distinct.
    broker_transport_options={"visibility_timeout": 3600,
                              "priority_steps": list(range(10)),
                              "queue_order_strategy": "priority"},
)

# The worker's app: its task is registered here (worker.tasks) and its broker set at start.
celery_app = Celery("nightshift", set_as_current=True)
celery_app.conf.update(CONFIG)


def broker_settings(broker_url: str) -> dict[str, Any]:
    """Celery settings for a broker URL. A `rediss://` URL without its own `ssl_cert_reqs`
    verifies the server's certificate: TLS that checks nothing is not a default."""
    settings: dict[str, Any] = {"broker_url": broker_url}
    if broker_url.startswith("rediss://") and "ssl_cert_reqs" not in broker_url:
        settings["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return settings


@lru_cache(maxsize=8)
def app_for(broker_url: str) -> Celery:
    """An app bound to one broker URL: a process may talk to several (tests, reconcile)."""
    app = Celery("nightshift", set_as_current=False)
    app.conf.update(CONFIG, **broker_settings(broker_url))
    return app

