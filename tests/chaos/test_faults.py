"""The fault suite's short version: each fault injected into two real workers on a Redis
and a PostgreSQL started for these tests alone (bench.chaos; `make chaos` runs it on
jobs of 500 items). After each, the job completed, every item has exactly one result,
the counters match a recount, the ledger holds no stale owner's answer, and every worker
is serving or exited with its code."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from bench.chaos.__main__ import LEASE_SECONDS, STALL_SECONDS, table
from bench.chaos.harness import Harness, Options
from bench.chaos.scenarios import (
    SHORT,
    Report,
    postgres_restart,
    redis_restart,
    refused_request,
    sigkill,
    stale_owner,
    stalled_engine,
)

pytestmark = [pytest.mark.chaos, pytest.mark.engine]

SEED = int(os.environ.get("NIGHTSHIFT_CHAOS_SEED") or random.randrange(10_000))


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    """Shared by the scenarios, in this module's order (those restarting workers last): a
    worker a scenario killed is started again by the next."""
    with Harness(Options(lease_seconds=LEASE_SECONDS, stall_seconds=STALL_SECONDS)) as h:
        yield h


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


def _survived(h: Harness, report: Report) -> None:
    print(table([report]))  # the figures, with pytest -rP
    assert report.ok, (f"{table([report])}\nseed {SEED} (NIGHTSHIFT_CHAOS_SEED)\n"
                       f"{h.log_tails()}")


def test_a_redis_restart_mid_job_loses_no_item(harness: Harness, rng: random.Random) -> None:
    _survived(harness, redis_restart(harness, SHORT, rng))


def test_a_postgresql_restart_mid_job_loses_no_item(harness: Harness,
                                                    rng: random.Random) -> None:
    _survived(harness, postgres_restart(harness, SHORT, rng))


def test_a_worker_paused_past_its_lease_writes_nothing_when_it_wakes(
        harness: Harness, rng: random.Random) -> None:
    _survived(harness, stale_owner(harness, SHORT, rng))


def test_requests_the_engine_refuses_fail_alone_and_the_workers_keep_serving(
        harness: Harness, rng: random.Random) -> None:
    _survived(harness, refused_request(harness, SHORT, rng))


def test_a_worker_killed_three_times_loses_and_duplicates_no_item(
        harness: Harness, rng: random.Random) -> None:
    report = sigkill(harness, SHORT, rng)
    _survived(harness, report)
    assert report.recover_s is not None


def test_a_stalled_engine_hands_its_chunks_back_and_its_worker_exits_70(
        harness: Harness, rng: random.Random) -> None:
    _survived(harness, stalled_engine(harness, SHORT, rng))
