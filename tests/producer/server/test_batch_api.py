"""`nightshift serve` through the real `openai` SDK, on SQLite and PostgreSQL, with no
worker: files, batches as jobs, validation, pagination, cancel, and keys kept apart."""

from __future__ import annotations

import io
import json
from typing import Any

import openai
import pytest
from conftest import Server

from producer import status


def batch_file(n: int, *, url: str = "/v1/chat/completions") -> bytes:
    body = (lambda i: {"model": "any", "messages": [{"role": "user", "content": f"Hi {i}"}],
                       "max_tokens": 8}) if url == "/v1/chat/completions" else (
        lambda i: {"model": "any", "prompt": f"Hi {i}", "max_tokens": 8})
    return "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url,
                               "body": body(i)}) + "\n" for i in range(n)).encode()


def expire_after_its_window(server: Server, client: openai.OpenAI, *, requests: int) -> Any:
    """A new batch, then reconcile's deadline pass run just after its window ends."""
    from datetime import UTC, datetime, timedelta

    from worker.reconcile import expire

    batch = client.batches.create(input_file_id=upload(client, batch_file(requests)),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.expires_at is not None
    expire(server.stack.db_url, datetime.fromtimestamp(batch.expires_at, UTC)
           + timedelta(seconds=1))
    return batch


def upload(client: openai.OpenAI, data: bytes, name: str = "in.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def test_a_batch_is_a_job_of_its_file_with_openais_batch_object(server: Server) -> None:
    client = server.client(server.key("team"))
    file_id = upload(client, batch_file(3))
    stored = client.files.retrieve(file_id)
    assert (stored.bytes, stored.purpose, stored.filename) == (len(batch_file(3)), "batch",
                                                               "in.jsonl")
    assert client.files.content(file_id).content == batch_file(3)

    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h",
                                  metadata={"team": "a", "nightshift.priority": "5"})

    assert batch.status == "in_progress" and batch.object == "batch"
    assert batch.request_counts is not None and batch.request_counts.total == 3
    assert batch.metadata == {"team": "a", "nightshift.priority": "5"}
    assert batch.expires_at is not None and batch.expires_at - batch.created_at == 24 * 3600
    job = status.status(server.stack.db_url, batch.id.removeprefix("batch_"))
    assert (job["total"], job["pending"], job["priority"]) == (3, 3, 5)
    assert client.batches.retrieve(batch.id).id == batch.id


def test_a_bad_line_makes_a_failed_batch_that_names_it_and_no_job(server: Server) -> None:
    client = server.client(server.key("team"))
    lines = batch_file(3).decode().splitlines()
    lines[1] = json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": "any"}})
    file_id = upload(client, ("\n".join(lines) + "\n").encode())
    jobs = len(status.all_jobs(server.stack.db_url))

    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h")

    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.line for e in batch.errors.data] == [2]
    assert "messages" in (batch.errors.data[0].message or "")
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert len(status.all_jobs(server.stack.db_url)) == jobs


def test_lines_of_another_endpoint_fail_the_batch(server: Server) -> None:
    client = server.client(server.key("team"))
    file_id = upload(client, batch_file(2, url="/v1/completions"))
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert batch.status == "failed"
    assert batch.errors is not None and [e.line for e in batch.errors.data or []] == [1, 2]


@pytest.mark.parametrize(("call", "param"), [
    ({"endpoint": "/v1/embeddings", "completion_window": "24h"}, "endpoint"),
    ({"endpoint": "/v1/chat/completions", "completion_window": "1h"}, "completion_window"),
    ({"endpoint": "/v1/chat/completions", "completion_window": "24h",
      "metadata": {"nightshift.temperature": "2"}}, "metadata"),
    ({"endpoint": "/v1/chat/completions", "completion_window": "24h",
      "metadata": {"nightshift.checks": '["no_such_check"]'}}, "metadata"),
])
def test_a_bad_batch_request_is_refused_naming_its_field(server: Server, call: dict,
                                                         param: str) -> None:
    client = server.client(server.key("team"))
    file_id = upload(client, batch_file(1))
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=file_id, **call)
    assert refused.value.status_code == 400
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == param


def test_uploads_that_are_not_batch_files_are_refused(stack) -> None:  # type: ignore[no-untyped-def]
    server = Server(stack, max_file_bytes=1000)
    try:
        client = server.client(server.key("team"))
        with pytest.raises(openai.BadRequestError, match="line 2 is not JSON"):
            upload(client, b'{"a": 1}\nnot json\n')
        with pytest.raises(openai.BadRequestError, match="purpose"):
            client.files.create(file=("in.jsonl", io.BytesIO(batch_file(1))),
                                purpose="fine-tune")
        with pytest.raises(openai.APIStatusError, match="over the limit") as big:
            upload(client, batch_file(40))
        assert big.value.status_code == 413
        with pytest.raises(openai.NotFoundError):
            client.batches.create(input_file_id="file-nothing",
                                  endpoint="/v1/chat/completions", completion_window="24h")
        assert client.files.list().data == []  # nothing refused was kept
        assert not any(server.files_dir.iterdir())
    finally:
        server.stop()


def test_batches_page_newest_first_and_the_sdk_follows_has_more(server: Server) -> None:
    client = server.client(server.key("team"))
    file_id = upload(client, batch_file(1))
    made = [client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h").id for _ in range(5)]

    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    every = [b.id for b in client.batches.list(limit=2)]  # auto-paging: after=last id
    assert sorted(every) == sorted(made) and len(every) == 5
    last = client.batches.list(limit=2, after=every[3])
    assert [b.id for b in last.data] == every[4:] and not last.has_more


def test_a_cancelled_batch_ends_cancelled_and_stays_so(server: Server) -> None:
    client = server.client(server.key("team"))
    batch = client.batches.create(input_file_id=upload(client, batch_file(2)),
                                  endpoint="/v1/chat/completions", completion_window="24h")

    cancelled = client.batches.cancel(batch.id)

    assert cancelled.status == "cancelled" and cancelled.cancelling_at is not None
    assert cancelled.request_counts is not None and cancelled.request_counts.failed == 2
    assert cancelled.output_file_id is None and cancelled.error_file_id is not None
    errors = [json.loads(line) for line in
              client.files.content(cancelled.error_file_id).text.splitlines()]
    assert sorted(e["custom_id"] for e in errors) == ["r0", "r1"]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_a_key_sees_only_its_own_files_and_batches_and_a_bad_key_none(
        server: Server) -> None:
    mine, theirs = server.client(server.key("a")), server.client(server.key("b"))
    admin = server.client(server.key("ops", admin=True))
    file_id = upload(mine, batch_file(1))
    batch = mine.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                completion_window="24h")

    for call in (lambda: theirs.files.retrieve(file_id),
                 lambda: theirs.files.content(file_id),
                 lambda: theirs.batches.retrieve(batch.id),
                 lambda: theirs.batches.cancel(batch.id),
                 lambda: theirs.batches.create(input_file_id=file_id,
                                               endpoint="/v1/chat/completions",
                                               completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert theirs.batches.list().data == [] and theirs.files.list().data == []
    assert admin.batches.retrieve(batch.id).id == batch.id
    with pytest.raises(openai.AuthenticationError):
        server.client("ns-not-a-key").batches.list()


def test_a_revoked_key_is_refused(server: Server, run) -> None:  # type: ignore[no-untyped-def]
    created = json.loads(run("keys", "create", "short-lived", "--json").output)
    client = server.client(created["key"])
    assert client.files.list().data == []
    run("keys", "revoke", "short-lived")
    with pytest.raises(openai.AuthenticationError):
        client.files.list()
    listed = json.loads(run("keys", "list", "--json").output)
    assert [k["name"] for k in listed if k["revoked_at"]] == ["short-lived"]
    assert "key" not in listed[0] and created["key"] not in run("keys", "list").output


def test_a_deleted_file_is_gone_from_the_directory_and_the_api(server: Server) -> None:
    client = server.client(server.key("team"))
    file_id = upload(client, batch_file(1))
    assert client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)
    assert not any(server.files_dir.iterdir())


def test_models_lists_what_live_workers_host(server: Server) -> None:
    from datetime import UTC, datetime

    from schemas import db
    from schemas.tables import Worker

    client = server.client(server.key("team"))
    assert client.models.list().data == []
    now = datetime.now(UTC)
    with db.session(server.stack.db_url) as session, session.begin():
        session.add(Worker(id="w:1:x", name="w", host="h", pid=1, model="demo", slots=1,
                           started_at=now, last_heartbeat_at=now))
    assert [m.id for m in client.models.list().data] == ["demo"]


def test_a_batch_past_its_window_is_expired_and_lists_what_did_not_run(
        server: Server) -> None:
    client = server.client(server.key("team"))
    batch = expire_after_its_window(server, client, requests=2)

    expired = client.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at is not None
    assert expired.error_file_id is not None and expired.output_file_id is None
    errors = [json.loads(line) for line in
              client.files.content(expired.error_file_id).text.splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"} and len(errors) == 2


def test_nightshift_serve_answers_with_openais_error_body(stack) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import time

    import httpx
    from conftest import NIGHTSHIFT, free_port

    port = free_port()
    proc = subprocess.Popen([NIGHTSHIFT, "serve", "--port", str(port), "--files-dir",
                             str(stack.workdir / "served-files")], env=stack.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/v1/batches")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_batch_for_a_model_that_is_a_path_is_refused_in_one_line(
        server: Server) -> None:
    client = server.client(server.key("team"))
    with pytest.raises(openai.BadRequestError, match="model"):
        client.batches.create(input_file_id=upload(client, batch_file(1)),
                              endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"nightshift.model": "../../etc/passwd"})


@pytest.mark.parametrize("metadata", [
    {"nightshift.model": "/etc"},
    {"nightshift.model": "../models/private"},
    {"nightshift.checks": '["blocklist:file=/etc/passwd"]'},
    {"nightshift.checks": '[{"name": "blocklist", "params": {"file": "/etc/passwd"}}]'},
])
def test_a_batch_cannot_name_a_place_on_the_server(server: Server, metadata: dict) -> None:
    client = server.client(server.key("team"))
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=upload(client, batch_file(1)),
                              endpoint="/v1/chat/completions", completion_window="24h",
                              metadata=metadata)
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "metadata"
    message = refused.value.body["message"]
    assert "/etc" not in message and "private" not in message  # nothing told of the path


def test_cancelling_an_ended_batch_changes_nothing(server: Server) -> None:
    client = server.client(server.key("team"))
    batch = expire_after_its_window(server, client, requests=1)

    after = client.batches.cancel(batch.id)

    assert after.status == "expired" and after.cancelling_at is None
    assert client.batches.retrieve(batch.id).status == "expired"


def test_an_output_files_size_is_counted_once_and_again_after_a_review(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.server import ANSWER, answer
    from producer import reviews
    from producer.server import batches

    client = server.client(server.key("team"))
    batch = client.batches.create(input_file_id=upload(client, batch_file(3)),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    job_id = batch.id.removeprefix("batch_")
    answer(server.stack.db_url, job_id)
    output_id = client.batches.retrieve(batch.id).output_file_id
    assert output_id is not None
    rendered: list[str] = []
    real_lines = batches.lines

    def counted_lines(*args: Any) -> Any:
        rendered.append(args[2])
        return real_lines(*args)

    monkeypatch.setattr(batches, "lines", counted_lines)

    counted = client.files.retrieve(output_id).bytes
    assert counted == len(client.files.content(output_id).content)
    assert client.files.retrieve(output_id).bytes == counted
    assert rendered == ["out", "out"]  # counted once, then the content itself

    reviews.record(server.stack.db_url, job_id, 1, "corrected", reviewer="ana",
                   correction=ANSWER + "and a longer one, given by a person")
    recounted = client.files.retrieve(output_id).bytes
    assert recounted == len(client.files.content(output_id).content) > counted
