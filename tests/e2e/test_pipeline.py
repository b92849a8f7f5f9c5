"""The whole loop on real parts: CLI → Redis → `nightshift worker` (vLLM) → SQL → CLI.

Every test runs once against SQLite and once against PostgreSQL, each with its own
worker process hosting the real engine on the demo model.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from conftest import Stack
from sqlalchemy import func, select

from schemas import db
from schemas.tables import Attempt, Chunk, ChunkStatus, Result
from worker import broker


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _result_rows(stack: Stack, job_id: str) -> int:
    with db.session(stack.db_url) as session:
        return session.scalar(select(func.count()).select_from(Result)
                              .where(Result.job_id == job_id))


def test_openai_batch_file_gives_one_result_per_custom_id(engine_stack: Stack,
                                                           tmp_path: Path) -> None:
    questions = ["What is the capital of France?", "Name a primary color.",
                 "What is 2 plus 2?", "Say hello in Spanish."]
    rows = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "max_tokens": 12, "temperature": 0,
                      "messages": [{"role": "user", "content": questions[i % 4]}]}}
            for i in range(30)]
    rows += [{"custom_id": f"cmpl-{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "smollm2-135m-instruct", "prompt": "Once upon a time",
                       "max_tokens": 8}} for i in range(2)]
    path = _write_jsonl(tmp_path / "batch.jsonl", rows)

    submitted = engine_stack.cli_json("submit", str(path), "--json", "--chunk-size", "8")
    assert submitted["items"] == 32
    status = engine_stack.wait_final(submitted["job_id"])

    assert status["state"] == "completed"
    assert status["succeeded"] == 32 and status["failed"] == 0
    assert _result_rows(engine_stack, submitted["job_id"]) == 32
    out = engine_stack.cli("results", submitted["job_id"], "--format", "openai").stdout
    lines = {(line := json.loads(text))["custom_id"]: line for text in out.splitlines()}
    assert sorted(lines) == sorted(r["custom_id"] for r in rows)
    for custom_id, line in lines.items():
        response = line["response"]
        assert line["error"] is None and response["status_code"] == 200
        body = response["body"]
        if custom_id.startswith("req-"):
            assert body["object"] == "chat.completion"
            assert body["choices"][0]["message"]["role"] == "assistant"
            assert body["choices"][0]["message"]["content"].strip()
            assert body["usage"]["completion_tokens"] <= 12
        else:
            assert body["object"] == "text_completion"
            assert body["choices"][0]["text"]
            assert body["usage"]["completion_tokens"] > 0

    # The greedy rows ask 4 questions: each runs once, and its copies take its answer
    # with no tokens counted. The sampled completions are independent samples.
    def answer(i: int) -> tuple[str, int]:
        body = lines[f"req-{i}"]["response"]["body"]
        return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]

    assert all(answer(i)[1] > 0 for i in range(4))
    assert all(answer(i) == (answer(i % 4)[0], 0) for i in range(4, 30))
    with db.session(engine_stack.db_url) as session:
        asked = session.scalar(select(func.count()).select_from(Attempt)
                               .where(Attempt.job_id == submitted["job_id"]))
    assert asked == 4 + 2


def test_classification_returns_only_labels_each_with_probabilities(engine_stack: Stack,
                                                                      tmp_path: Path) -> None:
    reviews = ["I loved it, a wonderful film!", "Terrible. I want my money back.",
               "Great acting and a beautiful story.", "Boring, slow and far too long.",
               "The best meal I have had this year.", "Awful service, cold food."]
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows([f"r{i}", text] for i, text in enumerate(reviews))
    labels = ["positive", "negative"]

    job = engine_stack.cli_json("submit", str(path), "--json", "--kind", "classify",
                                "--label", "positive", "--label", "negative",
                                "--template", "Review: {{ text }}\nIs this review positive "
                                "or negative?")["job_id"]
    assert engine_stack.wait_final(job)["succeeded"] == len(reviews)

    out = engine_stack.cli("results", job, "--format", "jsonl").stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == len(reviews)
    for r in results:
        assert r["label"] in labels and r["output"] == r["label"]
        assert set(r["probabilities"]) == set(labels)
        assert abs(sum(r["probabilities"].values()) - 1.0) < 1e-3
        assert r["probabilities"][r["label"]] >= 0.5 - 1e-6


def test_overlong_prompt_fails_alone_and_malformed_line_is_named(engine_stack: Stack,
                                                                  tmp_path: Path) -> None:
    good = [{"id": f"ok{i}", "prompt": f"Count to {i + 2}."} for i in range(5)]
    long = {"id": "too-long", "prompt": "word " * 4000}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(good[0]), json.dumps(long), '{"id": "bad", "prompt":',
                               *map(json.dumps, good[1:])]) + "\n")

    refused = engine_stack.cli("submit", str(path), "--max-tokens", "8", check=False)
    assert refused.returncode != 0
    assert "line 3: malformed JSON" in refused.stderr and "no job was created" in refused.stderr

    job = engine_stack.cli_json("submit", str(path), "--json", "--max-tokens", "8",
                                "--skip-invalid")
    assert job["items"] == 6
    status = engine_stack.wait_final(job["job_id"])
    assert (status["succeeded"], status["failed"]) == (5, 1)
    out = engine_stack.cli("results", job["job_id"]).stdout
    by_id = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert by_id["too-long"]["status"] == "failed"
    assert "tokens; the model's context is 2048" in by_id["too-long"]["error"]
    assert all(by_id[g["id"]]["status"] == "succeeded" for g in good)


def test_redelivered_and_rerun_chunks_leave_one_result_per_item(engine_stack: Stack,
                                                                  tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"Say the number {i}."}
                                                for i in range(6)])
    job = engine_stack.cli_json("submit", str(path), "--json", "--max-tokens", "6",
                                "--chunk-size", "3")["job_id"]
    engine_stack.wait_final(job)

    broker.enqueue(engine_stack.broker_url, "smollm2-135m-instruct", job, [0, 0, 1])
    # force a real second run of chunk 1
    with db.session(engine_stack.db_url) as session, session.begin():
        session.get_one(Chunk, (job, 1)).status = ChunkStatus.PENDING
    broker.enqueue(engine_stack.broker_url, "smollm2-135m-instruct", job, [1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with db.session(engine_stack.db_url) as session:
            if session.get_one(Chunk, (job, 1)).status == ChunkStatus.DONE:
                break
        time.sleep(0.5)
    time.sleep(2)

    with db.session(engine_stack.db_url) as session:
        rerun = session.get_one(Chunk, (job, 1))
        assert (rerun.status, rerun.deliveries) == (ChunkStatus.DONE, 2)
        assert session.get_one(Chunk, (job, 0)).deliveries == 1  # its duplicates were dropped
    assert _result_rows(engine_stack, job) == 6
    assert engine_stack.cli_json("status", job, "--json")["succeeded"] == 6


def test_extraction_with_a_json_schema_returns_json_that_the_schema_accepts(
        engine_stack: Stack, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    path = _write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "a", "text": "I flew to Paris, in France, last spring."},
        {"id": "b", "text": "Our office is in Osaka, Japan."}])

    job = engine_stack.cli_json("submit", str(path), "--json", "--max-tokens", "48",
                                "--json-schema", str(tmp_path / "schema.json"), "--template",
                                "Extract the city and country as JSON: {{ text }}")["job_id"]
    engine_stack.wait_final(job)

    for line in engine_stack.cli("results", job).stdout.splitlines():
        result = json.loads(line)
        if result["finish_reason"] == "stop":
            answer = json.loads(result["output"])
            assert set(answer) == {"city", "country"}
        else:  # cut off by max_tokens: still a prefix of schema-shaped JSON
            assert result["output"].lstrip().startswith("{")


def test_seeded_sampling_over_long_prompts_keeps_the_engine_alive(engine_stack: Stack,
                                                                   tmp_path: Path) -> None:
    """vLLM 0.32's CPU runner dies when a seeded, sampled request is prefilled in pieces;
    the worker prefills whole prompts on CPU, so a batch of long sampled prompts runs."""
    story = "The lighthouse keeper wrote down the weather every evening. " * 60
    rows = [{"id": f"long-{i}", "prompt": f"{story}\nQuestion {i}: what did the keeper do?"}
            for i in range(24)]
    path = _write_jsonl(tmp_path / "long.jsonl", rows)
    job = engine_stack.cli_json("submit", str(path), "--json", "--temperature", "0.8",
                                "--max-tokens", "8", "--chunk-size", "24")["job_id"]
    status = engine_stack.wait_final(job, timeout=400)
    assert (status["state"], status["succeeded"]) == ("completed", 24)
