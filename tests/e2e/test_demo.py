"""`make demo`, the README's first command, runs its whole story: a worker starts, the
example questions are submitted with a quality bar, watched to the end, reported on,
and read back from SQL. Nothing else runs its last step, which once broke on a Python
3.11 SyntaxError."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import redis
from conftest import REDIS, REDIS_DBS, WORKER_KV_GIB

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ROOT / "producer" / "examples" / "questions.jsonl"


def test_the_demo_script_answers_every_question_and_reads_results_back(
        tmp_path: Path) -> None:
    # Its own database and the Redis database no shared test worker listens on.
    broker = f"{REDIS}/{REDIS_DBS['unit']}"
    redis.Redis.from_url(broker).flushdb()
    # A KV cache of a fixed size: the shared test workers hold part of the memory node
    # whose share the worker would otherwise take.
    env = {**os.environ, "NIGHTSHIFT_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
           "NIGHTSHIFT_BROKER_URL": broker,
           "NIGHTSHIFT_DEMO_WORKER_ARGS": f"--kv-cache-memory {WORKER_KV_GIB}"}
    # Its own process group: on a timeout the script's worker goes down with it.
    demo = subprocess.Popen(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = demo.communicate(timeout=900)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGTERM)
            demo.wait(timeout=120)
    assert demo.returncode == 0, stdout[-3000:] + stderr[-3000:]

    lines = [line for line in QUESTIONS.read_text().splitlines() if line.strip()]
    report = re.search(r"pass rate: first try ([\d.]+)%\s+after retries ([\d.]+)%", stdout)
    assert report is not None, stdout[-3000:]
    assert float(report[2]) >= float(report[1])
    shown = re.findall(r"^\[(\S+)\] (succeeded|failed) \((\d+) attempts\): ", stdout,
                       re.MULTILINE)
    assert len(shown) == 5, stdout[-3000:]
    ids = {json.loads(line)["id"] for line in lines}
    assert {item for item, _, _ in shown} <= ids and len(ids) == len(lines)
    redis.Redis.from_url(broker).flushdb()
