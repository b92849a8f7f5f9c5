"""The read side of the CLI on real SQL: the JSON keys scripts rely on, exports, cancel."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import conftest
import pytest
from conftest import NIGHTSHIFT, Stack, lease

from producer import submit
from worker.chunks import write
from worker.generate import Outcome

Invoke = Callable[..., str]


@pytest.fixture
def run(run: conftest.Invoke) -> Invoke:
    """The shared `run`, answering with what the command printed: its stdout when it
    succeeds (notes on stderr are not data), everything when it fails."""

    def invoke(*args: str, code: int = 0) -> str:
        result = run(*args, code=code)
        return result.stdout if code == 0 else result.output

    return invoke


def _job(run: Invoke, tmp_path: Path, n: int = 3) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"p{i}"}) + "\n"
                            for i in range(n)))
    return json.loads(run("submit", str(path), "--json", "--chunk-size", "8"))["job_id"]


def test_status_json_has_the_contract_keys(run: Invoke, tmp_path: Path) -> None:
    job = _job(run, tmp_path)
    status = json.loads(run("status", job, "--json"))
    assert {"job_id", "state", "total", "pending", "running", "succeeded", "failed"} <= set(status)
    assert (status["state"], status["total"], status["pending"]) == ("queued", 3, 3)
    assert job in run("status")


def test_results_export_jsonl_csv_and_openai_from_sql(stack: Stack, run: Invoke,
                                                      tmp_path: Path) -> None:
    job = _job(run, tmp_path)
    write(stack.db_url, lease(stack.db_url, job, 0, "w"), [
        Outcome(0, "succeeded", output="zero", finish_reason="stop", prompt_tokens=5,
                completion_tokens=2),
        Outcome(1, "succeeded", output="one", finish_reason="length", prompt_tokens=5,
                completion_tokens=9),
        Outcome(2, "failed", error="prompt is 9000 tokens; the model's context is 2048")])

    lines = [json.loads(x) for x in run("results", job).splitlines()]
    assert [r["id"] for r in lines] == ["x0", "x1", "x2"]
    assert lines[0] | {"attempts": 1} == {**lines[0], "status": "succeeded", "output": "zero",
                                          "error": None, "prompt_tokens": 5,
                                          "completion_tokens": 2}
    assert lines[2]["status"] == "failed" and "9000 tokens" in lines[2]["error"]

    rows = list(csv.DictReader(io.StringIO(run("results", job, "--format", "csv"))))
    assert [r["output"] for r in rows] == ["zero", "one", ""]

    run("results", job, "--format", "openai", "-o", str(tmp_path / "out.jsonl"))
    openai = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert openai[1]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert openai[1]["response"]["body"]["usage"]["total_tokens"] == 14
    [error] = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert error["response"]["status_code"] == 400
    assert "9000 tokens" in error["response"]["body"]["error"]["message"]

    out = tmp_path / "r.parquet"
    run("results", job, "--format", "parquet", "-o", str(out))
    import pyarrow.parquet as pq
    assert pq.read_table(out).column("id").to_pylist() == ["x0", "x1", "x2"]

    assert run("watch", job, "--interval", "0.1")  # exit 0: the job completed


def test_cancel_stops_pending_items_and_watch_exits_non_zero(run: Invoke, tmp_path: Path) -> None:
    job = _job(run, tmp_path)
    assert "cancelled" in run("cancel", job)
    status = json.loads(run("status", job, "--json"))
    assert (status["state"], status["cancelled"], status["pending"]) == ("cancelled", 3, 0)
    run("watch", job, "--interval", "0.1", code=1)


def test_watch_follows_a_running_job_until_its_last_chunk_is_written(
        stack: Stack, run: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"p{i}"}) + "\n"
                            for i in range(4)))
    job = json.loads(run("submit", str(path), "--json", "--chunk-size", "2"))["job_id"]
    watching = subprocess.Popen([NIGHTSHIFT, "watch", job, "--json", "--interval", "0.2"],
                                env=stack.env(), stdout=subprocess.PIPE, text=True)
    try:
        assert watching.stdout is not None
        first = json.loads(watching.stdout.readline())  # watch is up before anything runs
        write(stack.db_url, lease(stack.db_url, job, 0, "w"), [Outcome(i, "succeeded", output="ok")
                                          for i in (0, 1)])
        seen = [first]
        while seen[-1]["succeeded"] < 2:
            seen.append(json.loads(watching.stdout.readline()))
        write(stack.db_url, lease(stack.db_url, job, 1, "w"), [Outcome(i, "succeeded", output="ok")
                                          for i in (2, 3)])
        seen += [json.loads(line) for line in watching.stdout]
        assert watching.wait(timeout=30) == 0
    finally:
        watching.kill()
    assert first["succeeded"] == 0 and first["state"] == "queued"
    halfway = [s for s in seen if s["succeeded"] == 2]
    assert halfway and all(s["state"] != "completed" for s in halfway)
    assert (seen[-1]["state"], seen[-1]["succeeded"]) == ("completed", 4)


def test_unknown_job_and_bad_settings_are_one_line_errors(run: Invoke) -> None:
    out = run("status", "nope-nope", code=4)
    assert out.strip() == "error: no job 'nope-nope' in this database (see `nightshift status`)"
    out = run("submit", "missing.jsonl", "--kind", "classify", "--label", "a", code=2)
    assert "classify job needs at least two --label values" in out and "Traceback" not in out


def test_an_invalid_json_schema_file_is_refused_before_anything_is_created(
        run: Invoke, tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text('{"type": "object", "properties": {"a": {"type": 7}}}')
    (tmp_path / "in.jsonl").write_text('{"prompt": "x"}\n')
    out = run("submit", str(tmp_path / "in.jsonl"), "--json-schema", str(tmp_path / "s.json"),
              code=2)
    assert out.startswith("error: job spec: json_schema: JSON Schema is invalid at properties/a")


def test_every_command_taking_a_job_takes_a_unique_prefix_of_its_id(
        run: Invoke, tmp_path: Path) -> None:
    job = _job(run, tmp_path)
    prefix = job[:8]

    assert json.loads(run("status", prefix, "--json"))["job_id"] == job
    assert json.loads(run("report", prefix, "--json"))["job_id"] == job
    assert run("results", job[:6]).count("\n") == 3
    assert run("cancel", prefix).strip() == f"{job}: cancelled"
    assert json.loads(run("watch", prefix, "--json", code=1))["job_id"] == job


def test_a_prefix_several_jobs_start_with_is_refused_and_lists_them(
        run: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["abcdef01" + "0" * 24, "abcdef02" + "0" * 24])
    monkeypatch.setattr(submit, "uuid", SimpleNamespace(uuid4=lambda: SimpleNamespace(
        hex=next(ids))))
    first, second = _job(run, tmp_path), _job(run, tmp_path)

    out = run("status", "abcdef", code=2)

    assert out.startswith("error: job 'abcdef' is the start of several jobs' ids")
    assert first in out and second in out
    assert json.loads(run("status", "abcdef02", "--json"))["job_id"] == second
    run("status", "abcde_", code=4)  # a prefix is matched literally, not as a LIKE pattern


def test_a_prefix_under_six_characters_is_refused(run: Invoke, tmp_path: Path) -> None:
    job = _job(run, tmp_path)
    out = run("cancel", job[:5], code=2)
    assert out.strip() == (f"error: job '{job[:5]}' is too short: give at least 6 characters "
                           "of its id (see `nightshift status`)")
    assert json.loads(run("status", job, "--json"))["state"] == "queued"
