"""`nightshift retry` with a real worker on the demo model: a job whose items all failed
its bar runs them again under a new one, in the same job, and the ledger keeps every
attempt in order; from the command line, and from the dashboard's button in a real
browser. Once on SQLite, once on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from browser import browser_fixture, go, login, text, wait_text  # noqa: F401 - a fixture
from conftest import Server, Stack
from sqlalchemy import select

from schemas import db
from schemas.tables import Attempt, Result


def _failed_job(stack: Stack, tmp_path: Path) -> str:
    """Four prompts under a bar no answer reaches, two attempts each: all fail."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Name a colour, {i}."}) + "\n"
                            for i in range(4)))
    job = stack.cli_json(
        "submit", str(path), "--json", "--temperature", "0", "--max-tokens", "8",
        "--check", "length:min=100000", "--max-attempts", "2", "--chunk-size", "2")["job_id"]
    first = stack.wait_final(job)
    assert (first["state"], first["failed"]) == ("completed", 4)
    return job


def test_a_failed_job_retried_under_a_new_bar_completes_and_keeps_its_ledger(
        engine_stack: Stack, tmp_path: Path) -> None:
    job = _failed_job(engine_stack, tmp_path)

    shown = engine_stack.cli_json("retry", job, "--failed", "--check", "length:max=100000",
                                  "--max-attempts", "1", "--json")
    assert (shown["items"], shown["chunks"], shown["state"]) == (4, 2, "queued")
    again = engine_stack.wait_final(job)
    assert (again["state"], again["succeeded"], again["failed"]) == ("completed", 4, 0)

    with db.session(engine_stack.db_url) as session:
        ledger = session.execute(select(Attempt.item_seq, Attempt.attempt, Attempt.passed,
                                        Attempt.sampling).where(Attempt.job_id == job)
                                 .order_by(Attempt.item_seq, Attempt.attempt)).all()
        results = session.execute(select(Result.attempt, Result.attempts, Result.quality)
                                  .where(Result.job_id == job)).all()
    for seq in range(4):
        attempts = [(n, ok, sampling) for s, n, ok, sampling in ledger if s == seq]
        assert [(n, ok) for n, ok, _ in attempts] == [(1, False), (2, False), (3, True)]
        first_try, retried = attempts[0][2], attempts[2][2]
        assert retried["temperature"] > first_try["temperature"] == 0  # not a greedy repeat
        assert retried["seed"] != first_try["seed"]
    assert set(results) == {(3, 3, "passed")}
    report = engine_stack.cli_json("report", job, "--json")
    assert report["checked_items"] == 4 and report["final_pass_rate"] == 1.0


def test_the_dashboards_retry_button_runs_the_failed_items_again(
        browser: Any, engine_stack: Stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    job = _failed_job(engine_stack, tmp_path)
    server = Server(engine_stack)
    try:
        login(browser, server, server.key("ops", admin=True))
        browser.get(f"{server.url}/jobs/{job}")
        browser.find_element(By.ID, "checks").send_keys("length:max=100000")
        browser.find_element(By.ID, "max_attempts").send_keys("1")
        go(browser, browser.find_element(By.ID, "retry"))
        assert text(browser, "notice") == "Running 4 items again."
        wait_text(browser, "state", "completed", timeout=240)  # the page follows the run
        assert (text(browser, "succeeded"), text(browser, "failed")) == ("4", "0")
    finally:
        server.stop()
