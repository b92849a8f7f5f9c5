"""A worker started with --enable-lora runs a job with a real peft adapter on the demo model:
the same prompts, greedy, answer differently with the adapter than without it, from one
engine, and the results name the adapter that answered."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import redis
from conftest import NIGHTSHIFT, REDIS, REDIS_DBS, WORKER_KV_GIB, Stack, Worker
from lora import RANK, make_adapter
from sqlalchemy import select

from schemas import db
from schemas.settings import load
from schemas.tables import Result
from worker.models import materialize_demo

# Open questions: a short factual answer ("Paris.") survives a small adapter unchanged.
PROMPTS = ["Name three colours of the rainbow.", "Write one sentence about the sea."]


class LoraWorker(Worker):
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.log = stack.workdir / "worker-lora.log"
        args = [NIGHTSHIFT, "worker", "--name", "lora", "--kv-cache-memory",
                str(WORKER_KV_GIB), "--max-model-len", "1024", "--enable-lora",
                "--max-lora-rank", str(RANK)]
        env = {**stack.env(), "NIGHTSHIFT_LEASE_SECONDS": "6"}
        self.proc = subprocess.Popen(args, env=env, cwd=stack.workdir, start_new_session=True,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)


def _results(stack: Stack, job_id: str) -> list[Result]:
    with db.session(stack.db_url) as session:
        return list(session.scalars(select(Result).where(Result.job_id == job_id)
                                    .order_by(Result.item_seq)))


def test_a_job_with_a_lora_adapter_answers_differently_and_records_the_adapter(
        tmp_path: Path) -> None:
    stack = Stack("sqlite", f"sqlite:///{tmp_path / 'nightshift.db'}",
                  f"{REDIS}/{REDIS_DBS['unit']}", tmp_path)
    db.upgrade(stack.db_url)
    redis.Redis.from_url(stack.broker_url).flushdb()
    adapter = make_adapter(materialize_demo(load().model_dir), tmp_path / "adapter")
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n"
                            for i, p in enumerate(PROMPTS)))
    worker = LoraWorker(stack)
    try:
        worker.wait_ready()
        greedy = ["--json", "--temperature", "0", "--max-tokens", "24"]
        plain = stack.cli_json("submit", str(path), *greedy)["job_id"]
        tuned = stack.cli_json("submit", str(path), *greedy, "--lora", str(adapter))["job_id"]
        finals = [stack.wait_final(job, timeout=600) for job in (plain, tuned)]
    finally:
        worker.stop()
        redis.Redis.from_url(stack.broker_url).flushdb()

    assert [f["state"] for f in finals] == ["completed", "completed"]
    base, with_lora = _results(stack, plain), _results(stack, tuned)
    assert all(r.status == "succeeded" and r.output for r in base + with_lora)
    changed = [b.output != t.output for b, t in zip(base, with_lora, strict=True)]
    print("base:", [r.output for r in base])
    print("lora:", [r.output for r in with_lora])
    assert all(changed), [(b.output, t.output) for b, t in zip(base, with_lora, strict=True)]
    assert all(r.sampling["lora"] == str(adapter) for r in with_lora)
    assert all("lora" not in r.sampling for r in base)
    assert stack.cli_json("status", tuned, "--json")["state"] == "completed"
