"""OpenAI's Batch API end to end: the real `openai` SDK against `nightshift serve`, a
worker on the demo model answering the batch, output and error files read back."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest
from conftest import Server, Stack

TOO_LONG = "word " * 4000  # over the test workers' 2,048-token context


def request(custom_id: str, content: str) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "demo", "max_tokens": 8, "temperature": 0,
                                "messages": [{"role": "user", "content": content}]}}) + "\n"


def test_the_sdk_runs_a_batch_through_a_worker_and_reads_its_files(
        engine_stack: Stack) -> None:
    server = Server(engine_stack)
    try:
        client = server.client(server.key("team"))
        lines = [request(f"q{i}", f"Name a colour ({i}).") for i in range(3)]
        lines.append(request("long", TOO_LONG))
        file_id = client.files.create(file=("batch.jsonl", io.BytesIO("".join(lines).encode())),
                                      purpose="batch").id
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        other = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert client.batches.cancel(other.id).status in ("cancelling", "cancelled")

        deadline = time.monotonic() + 300
        while (batch := client.batches.retrieve(batch.id)).status not in (
                "completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, batch
            time.sleep(1)

        assert batch.status == "completed" and batch.completed_at is not None
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
        assert batch.output_file_id and batch.error_file_id
        output = [json.loads(line) for line in
                  client.files.content(batch.output_file_id).text.splitlines()]
        assert sorted(line["custom_id"] for line in output) == ["q0", "q1", "q2"]
        for line in output:
            body = line["response"]["body"]
            assert line["response"]["status_code"] == 200 and body["object"] == "chat.completion"
            assert body["choices"][0]["message"]["content"]
        errors = [json.loads(line) for line in
                  client.files.content(batch.error_file_id).text.splitlines()]
        assert [e["custom_id"] for e in errors] == ["long"]
        assert errors[0]["response"]["status_code"] == 400
        assert client.files.retrieve(batch.output_file_id).bytes == len(
            client.files.content(batch.output_file_id).content)
        assert {b.id for b in client.batches.list()} >= {batch.id, other.id}
        with pytest.raises(openai.NotFoundError):
            server.client(server.key("stranger")).batches.retrieve(batch.id)
    finally:
        server.stop()

