"""A real worker with `--metrics-port` and `--log-format json` runs a real job: its
metrics endpoint counts the job's items and tokens, and every log line is JSON."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from conftest import NIGHTSHIFT, REDIS, REDIS_DBS, WORKER_KV_GIB, Stack, Worker, free_port
from prometheus_client.parser import text_string_to_metric_families

from schemas import db


class MonitoredWorker(Worker):
    def __init__(self, stack: Stack, port: int) -> None:
        self.stack = stack
        self.log = stack.workdir / "worker-monitored.log"
        args = [NIGHTSHIFT, "worker", "--name", "monitored", "--kv-cache-memory",
                str(WORKER_KV_GIB), "--max-model-len", "2048", "--metrics-port", str(port),
                "--log-format", "json"]
        env = {**stack.env(), "NIGHTSHIFT_LEASE_SECONDS": "6"}
        self.proc = subprocess.Popen(args, env=env, cwd=stack.workdir, start_new_session=True,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


TEACHER = " ".join(f"Rule {n}: you are a patient teacher who counts aloud for young children, "
                   "one number on each line, and says nothing else." for n in range(1, 13))


@pytest.mark.engine
def test_a_monitored_worker_serves_metrics_of_the_job_it_ran_and_logs_json(
        tmp_path: Path) -> None:
    port = free_port()
    stack = Stack("sqlite", f"sqlite:///{tmp_path / 'nightshift.db'}",
                  f"{REDIS}/{REDIS_DBS['unit']}", tmp_path)
    db.upgrade(stack.db_url)
    redis.Redis.from_url(stack.broker_url).flushdb()
    worker = MonitoredWorker(stack, port)
    try:
        worker.wait_ready()
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Count to {i + 2}."})
                                + "\n" for i in range(12)))
        job = stack.cli_json("submit", str(path), "--json", "--chunk-size", "4",
                             "--max-tokens", "16", "--temperature", "0",
                             "--system", TEACHER)["job_id"]
        final = stack.wait_final(job, timeout=300)
        assert final["state"] == "completed"
        time.sleep(0.5)
        shown = _scrape(port)
        status = stack.cli_json("status", job, "--json")
    finally:
        worker.stop()
        redis.Redis.from_url(stack.broker_url).flushdb()

    assert shown[("nightshift_items_total", (("status", "succeeded"),))] == final["succeeded"]
    assert shown[("nightshift_generated_tokens_total", ())] == status["completion_tokens"] > 0
    assert shown[("nightshift_prompt_tokens_total", ())] == status["prompt_tokens"] > 0
    assert shown[("nightshift_attempts_total", ())] >= 12
    assert shown[("nightshift_queue_depth", (("queue", "nightshift.smollm2-135m-instruct"),))] == 0
    assert shown[("nightshift_engine_running_requests", ())] == 0
    # Every prompt begins with the same system prompt, longer than a KV-cache block (128
    # tokens on the CPU): the engine found it cached.
    assert 0 < shown[("nightshift_engine_prefix_cache_hit_rate", ())] < 1
    assert shown[("nightshift_engine_prompt_tokens_cached_total", ())] > 0
    lines = [line for line in worker.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # No log record in a text format: ours, vLLM's or Celery's (what is left is raw
    # stderr: tqdm bars, native warnings, child processes' import-time prints).
    text_records = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ |"
                              r"(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d \d\d:|\[\d{4}-\d\d-\d\d )")
    assert [line for line in lines if text_records.match(line)] == []
    assert any(" ready." in r["message"] for r in records)
    assert any(r["logger"].startswith("vllm") for r in records)
    assert any(r["logger"] == "worker.main" for r in records)
    assert len(records) > len(lines) / 2


def test_a_running_worker_is_listed_with_its_model_a_recent_heartbeat_and_its_rate(
        engine_stack: Stack, tmp_path: Path) -> None:
    """The shared worker records itself: `nightshift workers --json` lists it under the
    model name it was started with, beating every few seconds, and once it has written
    results its generation rate shows."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"w{i}", "prompt": f"Name {i + 2} colours."})
                            + "\n" for i in range(4)))
    job = engine_stack.cli_json("submit", str(path), "--json", "--max-tokens", "24",
                                "--temperature", "0")["job_id"]
    assert engine_stack.wait_final(job, timeout=300)["state"] == "completed"

    deadline = time.monotonic() + 30
    while True:
        shown = [w for w in engine_stack.cli_json("workers", "--json")
                 if w["name"] == f"test-{engine_stack.name}"]
        if shown and shown[0]["tokens_per_s"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    [ours] = shown
    assert (ours["model"], ours["state"], ours["slots"]) == ("smollm2-135m-instruct", "running", 4)
    assert ours["heartbeat_age_s"] < 15 and ours["tokens_per_s"] > 0
