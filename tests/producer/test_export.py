"""Exports on real SQL (SQLite and PostgreSQL), with results rows written straight into the
tables: OpenAI's output and error-file shapes field by field, and the quality record in
JSONL, CSV and Parquet."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Stack
from sqlalchemy import insert, update

from producer.cli import cli
from schemas import db
from schemas.tables import Item, Job, Result

CHAT = {"url": "/v1/chat/completions", "messages": [{"role": "user", "content": "hi"}]}
TEXT = {"url": "/v1/completions", "prompt": "Once", "raw": True}
LINE_KEYS = {"id", "custom_id", "response", "error"}
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(autouse=True)
def on_stack(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs on SQLite and on PostgreSQL; the CLI finds them through the env."""
    monkeypatch.setenv("NIGHTSHIFT_DATABASE_URL", stack.db_url)
    monkeypatch.setenv("NIGHTSHIFT_BROKER_URL", stack.broker_url)


def run(*args: str, code: int = 0) -> str:
    """`nightshift ARGS` in-process; its stdout (messages on stderr are not data)."""
    done = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert done.exit_code == code, done.output
    return done.stdout


def make_job(db_url: str, items: list[tuple[str, dict[str, Any], dict[str, Any] | None]],
             kind: str = "generate", **job: Any) -> str:
    """A job whose items are (key, payload, results row or None), straight into SQL."""
    job_id = uuid.uuid4().hex
    with db.session(db_url) as session, session.begin():
        session.execute(insert(Job), [{"id": job_id, "kind": kind, "model": "smollm2-135m-instruct",
                                       "spec": {}, "state": "running", "total": len(items),
                                       "chunks": 1, **job}])
        session.execute(insert(Item), [
            {"job_id": job_id, "seq": seq, "key": key, "chunk": 0, "payload": payload,
             "status": result.get("status", "succeeded") if result else "pending"}
            for seq, (key, payload, result) in enumerate(items)])
        rows = [{"job_id": job_id, "item_seq": seq, "status": "succeeded",
                 "prompt_tokens": 7, "completion_tokens": 3, **result}
                for seq, (_, _, result) in enumerate(items) if result is not None]
        if rows:
            session.execute(insert(Result), rows)
    return job_id


def set_item_status(db_url: str, job_id: str, key: str, status: str) -> None:
    with db.session(db_url) as session, session.begin():
        session.execute(update(Item).where(Item.job_id == job_id, Item.key == key)
                        .values(status=status))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openai_output_line_is_a_chat_completion_in_openais_shape(
        stack: Stack, tmp_path: Path) -> None:
    job = make_job(stack.db_url, [("req-1", CHAT, {"output": "Hello!", "finish_reason": "stop"})])
    out = tmp_path / "batch_output.jsonl"
    run("results", job, "--format", "openai", "-o", str(out))

    [line] = read_jsonl(out)
    assert set(line) == LINE_KEYS and line["custom_id"] == "req-1" and line["error"] is None
    assert line["id"].startswith("batch_req_")
    response = line["response"]
    assert set(response) == {"status_code", "request_id", "body"}
    assert response["status_code"] == 200 and isinstance(response["request_id"], str)
    body = response["body"]
    assert {"id", "object", "created", "model", "choices", "usage"} <= set(body)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int) and body["model"] == "smollm2-135m-instruct"
    [choice] = body["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert (choice["index"], choice["logprobs"], choice["finish_reason"]) == (0, None, "stop")
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello!"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_openai_completions_request_gets_a_text_completion_with_every_sample(
        stack: Stack, tmp_path: Path) -> None:
    job = make_job(stack.db_url, [("t", TEXT, {"output": " upon", "samples": [" upon", " a"],
                                               "finish_reason": "length"})])
    out = tmp_path / "out.jsonl"
    run("results", job, "--format", "openai", "-o", str(out))

    body = read_jsonl(out)[0]["response"]["body"]
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert [set(c) for c in body["choices"]] == [{"text", "index", "logprobs",
                                                  "finish_reason"}] * 2
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, " upon"), (1, " a")]


def test_failed_requests_go_to_the_error_file_not_the_output(
        stack: Stack, tmp_path: Path) -> None:
    too_long = "prompt is 9000 tokens; the model's context is 2048 tokens (shorten it)"
    job = make_job(stack.db_url, [
        ("ok", CHAT, {"output": "fine"}),
        ("long", CHAT, {"status": "failed", "error": too_long, "prompt_tokens": 0,
                        "completion_tokens": 0}),
        ("bad", CHAT, {"status": "failed", "output": "meh", "quality": "failed",
                       "error": "failed quality after 3 attempts: min_words: 1 < 5"}),
        ("poison", CHAT, {"status": "failed", "error": "poison item: a worker died"}),
    ])
    out = tmp_path / "batch_output.jsonl"
    summary = json.loads(run("results", job, "--format", "openai", "-o", str(out), "--json"))

    errors_file = tmp_path / "batch_output.errors.jsonl"
    assert summary == {"job_id": job, "format": "openai", "rows": 1, "output": str(out),
                       "errors": 3, "errors_output": str(errors_file)}
    assert [x["custom_id"] for x in read_jsonl(out)] == ["ok"]
    errors = {x["custom_id"]: x for x in read_jsonl(errors_file)}
    assert list(errors) == ["long", "bad", "poison"]
    for line in errors.values():
        assert set(line) == LINE_KEYS and line["error"] is None
        assert set(line["response"]) == {"status_code", "request_id", "body"}
        assert set(line["response"]["body"]) == {"error"}
        assert set(line["response"]["body"]["error"]) == ERROR_KEYS
    long = errors["long"]["response"]
    assert long["status_code"] == 400
    assert long["body"]["error"] == {"message": too_long, "type": "invalid_request_error",
                                     "param": "messages", "code": "context_length_exceeded"}
    assert errors["bad"]["response"]["status_code"] == 422
    assert errors["bad"]["response"]["body"]["error"]["code"] == "quality_check_failed"
    assert errors["poison"]["response"]["status_code"] == 500
    assert errors["poison"]["response"]["body"]["error"]["type"] == "server_error"


def test_requests_that_never_ran_are_cancelled_or_expired_error_lines(
        stack: Stack, tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    cancelled = make_job(stack.db_url, [("a", CHAT, None)], state="cancelled")
    expired = make_job(stack.db_url, [("b", CHAT, None)], state="cancelled", deadline=past,
                       finished_at=past + timedelta(seconds=1))
    unfinished = make_job(stack.db_url, [("c", CHAT, None)])
    set_item_status(stack.db_url, cancelled, "a", "cancelled")
    set_item_status(stack.db_url, expired, "b", "cancelled")

    codes = {}
    for job in (cancelled, expired, unfinished):
        errors = tmp_path / f"{job}.errors.jsonl"
        run("results", job, "--format", "openai", "-o", str(tmp_path / job), "--errors",
            str(errors))
        [line] = read_jsonl(errors)
        assert line["response"] is None and set(line["error"]) == {"code", "message"}
        codes[job] = line["error"]["code"]
    assert codes == {cancelled: "batch_cancelled", expired: "batch_expired",
                     unfinished: "not_finished"}


def test_openai_to_stdout_keeps_error_lines_out_and_says_so(stack: Stack) -> None:
    job = make_job(stack.db_url, [("ok", CHAT, {"output": "x"}),
                                  ("no", CHAT, {"status": "failed", "error": "boom"})])
    result = CliRunner().invoke(cli, ["results", job, "--format", "openai"])
    assert result.exit_code == 0
    assert [json.loads(x)["custom_id"] for x in result.stdout.splitlines()] == ["ok"]
    assert "1 requests without an answer left out: pass --errors FILE" in result.stderr


def test_every_request_succeeded_still_writes_an_empty_error_file(
        stack: Stack, tmp_path: Path) -> None:
    job = make_job(stack.db_url, [("ok", CHAT, {"output": "x"})])
    stale = tmp_path / "o.errors.jsonl"
    stale.write_text('{"stale": true}\n')
    run("results", job, "--format", "openai", "-o", str(tmp_path / "o.jsonl"))
    assert stale.read_text() == ""


def test_errors_option_is_refused_for_other_formats(stack: Stack) -> None:
    job = make_job(stack.db_url, [("ok", CHAT, {"output": "x"})])
    run("results", job, "--errors", "e.jsonl", code=2)


QUALITY = {"output": "Paris is the capital.", "quality": "needs_review", "attempts": 2,
           "attempt": 2, "checks": [{"name": "min_words", "passed": True, "score": 4.0,
                                     "reason": None}],
           "metrics": {"rouge_l": 0.5}}


def test_jsonl_csv_and_parquet_carry_the_quality_record(
        stack: Stack, tmp_path: Path) -> None:
    job = make_job(stack.db_url, [("q", CHAT, QUALITY), ("p", CHAT, None)])

    first, pending = (json.loads(x) for x in run("results", job).splitlines())
    assert {k: first[k] for k in ("quality", "attempts", "attempt", "checks", "metrics")} == {
        k: QUALITY[k] for k in ("quality", "attempts", "attempt", "checks", "metrics")}
    assert (pending["status"], pending["quality"], pending["attempts"]) == ("pending", None, 0)

    row = next(csv.DictReader(io.StringIO(run("results", job, "--format", "csv"))))
    assert (row["quality"], row["attempts"], row["attempt"]) == ("needs_review", "2", "2")
    assert json.loads(row["checks"]) == QUALITY["checks"]
    assert json.loads(row["metrics"]) == QUALITY["metrics"]

    import pyarrow.parquet as pq

    out = tmp_path / "r.parquet"
    run("results", job, "--format", "parquet", "-o", str(out))
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == ["q", "p"]
    assert table[0]["quality"] == "needs_review" and table[0]["attempt"] == 2
    assert json.loads(table[0]["checks"]) == QUALITY["checks"]
    assert table[1]["quality"] is None


def test_a_batch_input_file_round_trips_to_openai_output_by_custom_id(
        stack: Stack, tmp_path: Path) -> None:
    """An OpenAI batch file submitted unchanged comes back keyed by its custom_ids, each
    line shaped by its own URL."""
    lines = [{"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 5}},
             {"custom_id": "text-1", "method": "POST", "url": "/v1/completions",
              "body": {"model": "gpt-3.5-turbo-instruct", "prompt": "Say", "max_tokens": 5}}]
    path = tmp_path / "batch_input.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    job = json.loads(run("submit", str(path), "--json"))["job_id"]
    with db.session(stack.db_url) as session, session.begin():
        session.execute(insert(Result), [{"job_id": job, "item_seq": i, "status": "succeeded",
                                          "output": "ok", "finish_reason": "stop"} for i in (0, 1)])
        session.execute(update(Item).where(Item.job_id == job).values(status="succeeded"))

    out = tmp_path / "batch_output.jsonl"
    run("results", job, "--format", "openai", "-o", str(out))
    got = {x["custom_id"]: x["response"]["body"]["object"] for x in read_jsonl(out)}
    assert got == {"chat-1": "chat.completion", "text-1": "text_completion"}
    assert (tmp_path / "batch_output.errors.jsonl").read_text() == ""


def test_lines_parse_with_openais_own_sdk_types(stack: Stack, tmp_path: Path) -> None:
    """The bodies validate as the `openai` package's ChatCompletion, Completion and
    ErrorObject (it comes with vLLM), so code typed against the SDK reads them."""
    from openai.types import Completion
    from openai.types.chat import ChatCompletion
    from openai.types.shared import ErrorObject

    job = make_job(stack.db_url, [
        ("c", CHAT, {"output": "Hi", "finish_reason": "stop"}),
        ("t", TEXT, {"output": " upon", "finish_reason": "length"}),
        ("x", CHAT, {"status": "failed", "error": "poison item"})])
    run("results", job, "--format", "openai", "-o", str(tmp_path / "o.jsonl"))
    chat, text = (x["response"]["body"] for x in read_jsonl(tmp_path / "o.jsonl"))
    assert ChatCompletion.model_validate(chat).choices[0].message.content == "Hi"
    assert Completion.model_validate(text).choices[0].text == " upon"
    [error] = read_jsonl(tmp_path / "o.errors.jsonl")
    assert ErrorObject.model_validate(error["response"]["body"]["error"]).type == "server_error"


def test_a_job_longer_than_a_page_exports_every_item_in_order_with_its_own_result(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from producer import export, reviews

    monkeypatch.setattr(export, "PAGE", 4)  # pages of 4 items: 11 items end mid-page
    job = make_job(stack.db_url, [(f"k{seq}", CHAT, None if seq % 3 == 0 else
                                   {"output": f"answer {seq}"}) for seq in range(11)])
    reviews.record(stack.db_url, job, 4, "corrected", correction="fixed 4", reviewer="ana")

    lines = [json.loads(line) for line in run("results", job, "--format", "jsonl").splitlines()]

    assert [line["id"] for line in lines] == [f"k{seq}" for seq in range(11)]
    assert [line["output"] for line in lines] == [
        None if seq % 3 == 0 else "fixed 4" if seq == 4 else f"answer {seq}"
        for seq in range(11)]
    assert [line["review"] for line in lines] == [
        "corrected" if seq == 4 else None for seq in range(11)]
