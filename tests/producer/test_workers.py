"""Workers as people and scripts see them, on real SQL: `nightshift workers`, the reason
`status` gives for a job no live worker can take, and `submit`'s warning on stderr."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import Invoke, Stack
from sqlalchemy import update

from producer.cli import cli
from schemas import db
from schemas.tables import Worker
from worker import presence
from worker.presence import Presence


@pytest.fixture
def model() -> str:
    """A model of the test's own: the PostgreSQL database is shared by tests."""
    return f"acme/m-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker(stack: Stack, model: str) -> Iterator[Presence]:
    """A worker of `model`, recorded and live (no engine: only its row)."""
    p = Presence(stack.db_url, f"gpu-7:{uuid.uuid4().hex[:8]}", model, 4, name="gpu-7",
                 every=3600.0).start()
    yield p
    p.stop()


def _ours(shown: list[dict[str, object]], p: Presence) -> list[dict[str, object]]:
    return [w for w in shown if w["id"] == p.row["id"]]


def _submit(run: Invoke, tmp_path: Path, model: str, *more: str) -> Result:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"p{i}"}) + "\n"
                            for i in range(3)))
    return run("submit", str(path), "--model", model, *more)


def test_workers_json_is_one_list_of_the_live_workers_with_their_model_as_started(
        run: Invoke, worker: Presence, model: str) -> None:
    shown = json.loads(run("workers", "--json").stdout)

    assert isinstance(shown, list)
    [ours] = _ours(shown, worker)
    assert {k: ours[k] for k in ("name", "model", "slots", "state")} == {
        "name": "gpu-7", "model": model, "slots": 4, "state": "running"}
    assert {"host", "pid", "started_at", "last_heartbeat_at", "heartbeat_age_s",
            "tokens_per_s"} <= set(ours)
    table = run("workers").stdout
    assert table.startswith("name") and "gpu-7" in table and model in table


def test_a_stopped_worker_is_listed_only_with_all(run: Invoke, worker: Presence) -> None:
    worker.stop()

    assert _ours(json.loads(run("workers", "--json").stdout), worker) == []
    [ours] = _ours(json.loads(run("workers", "--all", "--json").stdout), worker)
    assert ours["state"] == "stopped"


def test_no_live_worker_is_a_note_on_stderr_and_an_empty_list_in_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a database of its own: the shared PostgreSQL one may hold other tests' workers."""
    monkeypatch.setenv("NIGHTSHIFT_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    empty = CliRunner().invoke(cli, ["workers"], catch_exceptions=False)
    assert empty.stdout == "" and "no worker seen in the last 5 min" in empty.stderr
    listed = CliRunner().invoke(cli, ["workers", "--json"], catch_exceptions=False)
    assert json.loads(listed.stdout) == []


def test_status_of_a_job_no_live_worker_can_take_says_it_waits_for_its_model(
        run: Invoke, tmp_path: Path, model: str) -> None:
    job = json.loads(_submit(run, tmp_path, model, "--json").stdout)["job_id"]

    shown = json.loads(run("status", job, "--json").stdout)
    reason = f"waiting: no worker for model {model} seen in the last 5 min"
    assert (shown["state"], shown["reason"]) == ("queued", reason)
    assert reason in run("status", job).stdout
    assert reason in run("status").stdout


def test_status_gives_no_waiting_reason_while_a_worker_of_the_model_is_live(
        run: Invoke, tmp_path: Path, model: str, stack: Stack) -> None:
    job = json.loads(_submit(run, tmp_path, model, "--json").stdout)["job_id"]
    p = Presence(stack.db_url, f"late:{uuid.uuid4().hex[:8]}", model, 1).start()
    try:
        assert json.loads(run("status", job, "--json").stdout)["reason"] is None
        with db.session(stack.db_url) as session, session.begin():  # silent past the live window
            session.execute(update(Worker).where(Worker.id == p.row["id"])
                            .values(last_heartbeat_at=db.clock(session) - presence.LIVE * 2))
        assert json.loads(run("status", job, "--json").stdout)["reason"].startswith("waiting")
    finally:
        p.stop()


def test_submit_warns_on_stderr_when_no_worker_of_the_model_is_live(
        run: Invoke, tmp_path: Path, model: str, worker: Presence) -> None:
    typo = model + "x"
    done = _submit(run, tmp_path, typo, "--json")

    assert json.loads(done.stdout)["items"] == 3  # stdout stays one JSON document
    [warning] = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert f"no worker for model {typo} seen in the last 5 min" in warning
    assert model in warning  # the models live workers do host: the typo shows


def test_submit_does_not_warn_when_a_worker_of_the_model_is_live(
        run: Invoke, tmp_path: Path, model: str, worker: Presence) -> None:
    done = _submit(run, tmp_path, model)

    assert "warning" not in done.stderr and len(done.stdout.split()) == 1  # the job id


def test_a_dry_run_does_not_warn(run: Invoke, tmp_path: Path, tokenizer: object) -> None:
    done = _submit(run, tmp_path, "smollm2-135m-instruct", "--dry-run", "--json")

    assert json.loads(done.stdout)["rows"] == 3 and "warning" not in done.stderr
