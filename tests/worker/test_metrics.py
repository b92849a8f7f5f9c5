"""Worker metrics: counters after a chunk's outcomes, gauges read at scrape time, all
served over HTTP in Prometheus's text format."""

from __future__ import annotations

import faulthandler
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Stack, free_port
from prometheus_client.parser import text_string_to_metric_families

from schemas.spec import JobSpec
from worker import broker, metrics
from worker.engine import PrefixCache

MODEL = JobSpec().model


@dataclass
class Outcome:
    status: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    checks: list[dict[str, Any]] | None = field(default=None)


class Host:
    """An engine host's load as the real one reports it: in the engine, not yet handed
    over, max_num_seqs."""

    prefix_cache = PrefixCache(prompt_tokens=200, cached_tokens=50)

    def load(self) -> tuple[int, int, int]:
        return 10, 3, 8


def _read(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
    except TimeoutError:  # seen once in CI, never here: show where the server's thread waits
        faulthandler.dump_traceback(all_threads=True)
        raise
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def scrape(stack: Stack) -> Iterator[Any]:
    port = free_port()
    server = metrics.start(port, stack.broker_url, MODEL, Host(), addr="127.0.0.1")
    yield lambda: _read(port)
    server.shutdown()
    server.server_close()
    metrics.LIVE.bind("", "", None)


def test_observed_outcomes_are_counted_by_status_tokens_attempts_and_failed_check(
        scrape: Any) -> None:
    before = scrape()
    metrics.observe([
        Outcome("succeeded", 10, 20, attempts=1,
                checks=[{"name": "nonempty", "passed": True, "score": None, "reason": ""}]),
        Outcome("succeeded", 12, 30, attempts=3,
                checks=[{"name": "no_repetition", "passed": False, "score": 0.4,
                         "reason": "repeats"},
                        {"name": "nonempty", "passed": True, "score": None, "reason": ""}]),
        Outcome("failed", 7, 0, attempts=1, checks=None),
    ])
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("nightshift_items_total", status="succeeded") == 2
    assert grew("nightshift_items_total", status="failed") == 1
    assert grew("nightshift_prompt_tokens_total") == 29
    assert grew("nightshift_generated_tokens_total") == 50
    assert grew("nightshift_attempts_total") == 5
    assert grew("nightshift_check_failures_total", check="no_repetition") == 1
    assert grew("nightshift_check_failures_total", check="nonempty") == 0


def test_gauges_show_the_queue_in_redis_the_engine_load_and_its_prefix_cache_at_scrape_time(
        scrape: Any, stack: Stack) -> None:
    queue = ("queue", f"nightshift.{MODEL}")
    assert scrape()[("nightshift_queue_depth", (queue,))] == 0
    broker.enqueue(stack.broker_url, MODEL, "job", range(3), priority=9)
    broker.enqueue(stack.broker_url, MODEL, "job", range(3, 5), priority=0)

    shown = scrape()

    assert shown[("nightshift_queue_depth", (queue,))] == 5
    assert shown[("nightshift_engine_running_requests", ())] == 8
    assert shown[("nightshift_engine_waiting_requests", ())] == 2 + 3
    assert shown[("nightshift_engine_utilisation", ())] == 1.0
    assert shown[("nightshift_engine_prefix_cache_hit_rate", ())] == 0.25
    assert shown[("nightshift_engine_prompt_tokens_cached_total", ())] == 50


def test_an_unreachable_broker_leaves_the_queue_gauge_out_and_the_scrape_answers(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    server = metrics.start(port, "redis://127.0.0.1:1/0", MODEL, Host(), addr="127.0.0.1")
    try:
        names = {name for name, _ in _read(port)}
    finally:
        server.shutdown()
        server.server_close()
        metrics.LIVE.bind("", "", None)
    assert "nightshift_engine_running_requests" in names
    assert "nightshift_queue_depth" not in names
    assert "queue depth unavailable: cannot reach the broker" in caplog.text


def test_a_malformed_outcome_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    metrics.observe([object()])
    assert "could not count" in caplog.text
