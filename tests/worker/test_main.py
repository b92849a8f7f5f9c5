"""What `nightshift worker` sets up before it takes chunks."""

from __future__ import annotations

import psycopg
import pytest
from conftest import PG_ADMIN

from worker.main import bound_idle_transactions


def test_a_workers_postgresql_sessions_end_when_idle_in_a_transaction_for_two_leases(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c application_name=ns-test")
    bound_idle_transactions(6)
    with psycopg.connect(PG_ADMIN) as conn:
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("12s",)
        assert conn.execute("SHOW application_name").fetchone() == ("ns-test",)
