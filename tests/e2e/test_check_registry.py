"""Checks on the real pipeline: a worker runs the operator's registered checks (each call
bounded in time) and never imports anything a job spec names, even a spec written into SQL
by hand. Each test runs once on SQLite and once on PostgreSQL, with a real worker whose
operator registered tests/quality/custom.py (conftest's Worker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import CHECK_MODULES, ROOT, Stack
from sqlalchemy import update

from quality import registry
from schemas import db
from schemas.tables import Job

PROMPTS = [{"id": f"p{i}", "prompt": f"Name {i + 2} colours."} for i in range(3)]
PLANTED = "tests.e2e.planted"


def _prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS), encoding="utf-8")
    return path


def _results(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    out = stack.cli("results", job_id, "--format", "jsonl").stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def registered_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Submit runs where the workers' operator registered the same checks."""
    monkeypatch.setenv("NIGHTSHIFT_CHECK_MODULES", CHECK_MODULES)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def test_a_spec_edited_in_sql_to_name_unregistered_code_fails_its_items_and_imports_nothing(
        engine_stack: Stack, tmp_path: Path) -> None:
    mark = engine_stack.workdir / "planted-module-was-imported"
    mark.unlink(missing_ok=True)
    job = engine_stack.cli_json(
        "submit", str(_prompts(tmp_path / "in.jsonl")), "--json", "--check", "non_empty",
        "--max-tokens", "8", "--max-attempts", "2", "--start-at", "2099-01-01T00:00")["job_id"]
    named = [{"name": "custom", "params": {"fn": f"{PLANTED}:touch"}},
             {"name": PLANTED, "params": {}}]
    with db.session(engine_stack.db_url) as session, session.begin():
        spec = dict(session.get(Job, job).spec)  # type: ignore[union-attr]
        session.execute(update(Job).where(Job.id == job).values(
            spec={**spec, "checks": named},
            start_at=datetime.now(UTC) - timedelta(minutes=1)))
    engine_stack.cli("reconcile")  # the job's start time has come: it is enqueued
    assert engine_stack.wait_final(job, timeout=300)["state"] == "completed"

    results = _results(engine_stack, job)
    assert sorted(r["id"] for r in results) == [r["id"] for r in PROMPTS]
    for r in results:
        assert r["status"] == "failed" and r["attempts"] == 1  # no retry could pass
        for check in named:
            assert f"check {check['name']!r} is not registered on this worker" in r["error"]
    assert not mark.exists()


def test_a_worker_runs_the_operators_checks_and_stops_one_past_its_time_limit(
        engine_stack: Stack, tmp_path: Path, registered_here: None) -> None:
    path = _prompts(tmp_path / "in.jsonl")
    counted = engine_stack.cli_json(
        "submit", str(path), "--json", "--temperature", "0", "--max-tokens", "16",
        "--check", "short_enough:most=3", "--max-attempts", "1")["job_id"]
    stuck = engine_stack.cli_json(
        "submit", str(path), "--json", "--max-tokens", "4", "--check", "forever",
        "--max-attempts", "1", "--chunk-size", "1")["job_id"]
    for job in (counted, stuck):
        assert engine_stack.wait_final(job, timeout=300)["state"] == "completed"

    for r in _results(engine_stack, counted):
        [verdict] = r["checks"]
        words = len(r["output"].split())
        assert (verdict["name"], verdict["score"], verdict["passed"]) == (
            "short_enough", words, words <= 3)
        assert r["status"] == ("succeeded" if words <= 3 else "failed")
    for r in _results(engine_stack, stuck):
        assert r["status"] == "failed"
        assert (f"check forever ran past its limit of {registry.CALL_SECONDS:g} s and was "
                "stopped") in r["error"]
