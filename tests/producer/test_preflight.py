"""Pre-flight (`submit --dry-run`): every row read and tokenized as the worker would,
problems named by line, token totals, an ETA from measured throughput; nothing written."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from conftest import Stack
from sqlalchemy import func, insert, select

from producer.cli import cli
from producer.preflight import calibrate, preflight
from schemas import db
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Job, Result

LONG = "word " * 300


def _input(tmp_path: Path) -> Path:
    lines = [json.dumps({"id": "a", "prompt": "What is 2+2?"}),
             '{"id": "broken"',
             json.dumps({"id": "b", "prompt": LONG}),
             json.dumps({"id": "a", "prompt": "again"}),
             json.dumps({"id": "c", "prompt": "Name a colour."})]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _chat_tokens(tokenizer: Any, prompt: str) -> int:
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True)
    return len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def test_a_dry_run_names_bad_rows_by_line_and_totals_the_engines_tokens(
        tokenizer: Any, tmp_path: Path) -> None:
    settings = load(database_url=f"sqlite:///{tmp_path / 'none.db'}")
    spec = JobSpec(sampling={"max_tokens": 100})

    report = preflight(settings, spec, _input(tmp_path), tokenizer=tokenizer, context=400)

    assert report.rows == 3
    assert (report.malformed_count, [m["line"] for m in report.malformed]) == (1, [2])
    assert report.duplicates == [{"line": 4, "id": "a"}]
    sizes = {k: _chat_tokens(tokenizer, p) for k, p in
             (("a", "What is 2+2?"), ("b", LONG), ("c", "Name a colour."))}
    assert report.prompt_tokens == sum(sizes.values())
    assert sizes["b"] + 100 > 400 > sizes["b"]
    assert [(o["line"], o["id"], o["fails"]) for o in report.over_long] == [(3, "b", False)]
    assert report.max_new_tokens == 100 + 100 + (400 - sizes["b"])
    assert report.calibration is None and report.eta_seconds is None
    assert "no calibration yet" in report.text()
    assert not (tmp_path / "none.db").exists()


def test_a_prompt_longer_than_the_context_is_reported_as_failing(
        tokenizer: Any, tmp_path: Path) -> None:
    settings = load(database_url=f"sqlite:///{tmp_path / 'none.db'}")
    report = preflight(settings, JobSpec(), _input(tmp_path), tokenizer=tokenizer, context=200)
    failing = [o for o in report.over_long if o["fails"]]
    assert [o["id"] for o in failing] == ["b"]
    assert "it would fail" in failing[0]["reason"]


def _results(db_url: str, model: str, worker: str, start: datetime, tokens: list[int],
             every: float) -> None:
    with db.session(db_url) as session, session.begin():
        job_id = f"calib{worker}{start.timestamp():.0f}"[:32]
        session.add(Job(id=job_id, state="completed", kind="generate", model=model, spec={}))
        session.flush()
        session.execute(insert(Result), [
            {"job_id": job_id, "item_seq": i, "status": "succeeded", "worker": worker,
             "completion_tokens": n, "created_at": start + timedelta(seconds=i * every)}
            for i, n in enumerate(tokens)])


def test_calibration_sums_the_rates_of_the_workers_running_lately(stack: Stack) -> None:
    model = f"/models/calibration-{stack.name}-{datetime.now(UTC).timestamp()}"
    assert calibrate(stack.db_url, model)[0] is None
    now = datetime.now(UTC)
    _results(stack.db_url, model, "w1", now - timedelta(seconds=10), [50] * 11, 1.0)
    _results(stack.db_url, model, "w2", now - timedelta(seconds=20), [30] * 11, 2.0)
    _results(stack.db_url, model, "old", now - timedelta(hours=3), [999] * 11, 1.0)

    measured, note = calibrate(stack.db_url, model)

    assert measured is not None and note == "measured"
    # w1: 10 x 50 tokens after its first write, in 10 s; w2: 10 x 30 in 20 s; "old" is idle.
    assert measured.tokens_per_second == pytest.approx(50 + 15)
    assert (measured.workers, measured.results) == (2, 33)


def test_the_eta_divides_the_jobs_tokens_by_the_measured_rate(
        tokenizer: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'calibrated.db'}"
    db.upgrade(url)
    spec = JobSpec(sampling={"max_tokens": 100})
    _results(url, spec.model, "w1", datetime.now(UTC) - timedelta(seconds=10), [20] * 11, 1.0)

    report = preflight(load(database_url=url), spec, _input(tmp_path), tokenizer=tokenizer)

    assert report.calibration is not None
    assert report.calibration.tokens_per_second == pytest.approx(20.0)
    assert report.eta_seconds == pytest.approx(report.max_new_tokens / 20.0)
    assert report.eta_typical_seconds == pytest.approx(3 * 20 / 20.0)
    assert "ETA             at most" in report.text()


def test_submit_dry_run_prints_the_report_as_json_and_writes_nothing(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DATABASE_URL", stack.db_url)
    monkeypatch.setenv("NIGHTSHIFT_BROKER_URL", stack.broker_url)
    with db.session(stack.db_url) as session:
        jobs_before = session.scalar(select(func.count()).select_from(Job))

    out = CliRunner().invoke(cli, ["submit", str(_input(tmp_path)), "--dry-run", "--json"],
                             catch_exceptions=False)

    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert {"rows", "malformed", "duplicates", "over_long", "prompt_tokens", "max_new_tokens",
            "eta_seconds", "calibration"} <= set(shown)
    assert (shown["rows"], shown["malformed"][0]["line"]) == (3, 2)
    with db.session(stack.db_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == jobs_before
    assert redis.Redis.from_url(stack.broker_url).keys("*") == []
