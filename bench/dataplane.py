"""The data plane without the engine: submit a large JSONL, write results in bulk, ask
status. Prints figures and adds them to bench/results/dataplane.json.

    python -m bench.dataplane --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from schemas import db
from schemas.tables import Item
from worker.chunks import write
from worker.generate import Outcome

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def make_input(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(f'{{"id": "r{i}", "prompt": "Summarize item {i} in one sentence."}}\n')


def timed_submit(path: Path, env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "nightshift"), "submit", str(path), "--json",
                           "--chunk-size", "256"], env=env, capture_output=True, text=True,
                          check=True)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {**json.loads(done.stdout), "submit_s": wall, "submit_peak_rss_mb": peak_kb / 1024}


def result_write_rate(db_url: str, job_id: str, rows: int) -> float:
    text = "x" * 600
    start = time.perf_counter()
    for chunk, first in enumerate(range(0, rows, 1000)):
        outcomes = [Outcome(i, "succeeded", output=text, completion_tokens=100)
                    for i in range(first, min(first + 1000, rows))]
        write(db_url, job_id, chunk, "bench", outcomes)
    return rows / (time.perf_counter() - start)


def status_latency(env: dict[str, str], job_id: str) -> float:
    from producer.status import status

    status(env["NIGHTSHIFT_DATABASE_URL"], job_id)  # warm
    start = time.perf_counter()
    for _ in range(5):
        status(env["NIGHTSHIFT_DATABASE_URL"], job_id)
    return (time.perf_counter() - start) / 5 * 1000


def run(db_url: str, rows: int, write_rows: int, work: Path) -> dict[str, Any]:
    broker = "redis://127.0.0.1:6379/15"
    redis.Redis.from_url(broker).flushdb()
    env = {**os.environ, "NIGHTSHIFT_DATABASE_URL": db_url, "NIGHTSHIFT_BROKER_URL": broker}
    path = work / "rows.jsonl"
    if not path.exists():
        make_input(path, rows)
    submitted = timed_submit(path, env)
    with db.session(db_url) as s:
        assert s.scalar(select(Item.seq).where(Item.job_id == submitted["job_id"])
                        .order_by(Item.seq.desc()).limit(1)) == rows - 1
    figures = {"rows": rows, "submit_s": round(submitted["submit_s"], 2),
               "submit_peak_rss_mb": round(submitted["submit_peak_rss_mb"], 1),
               "status_ms": round(status_latency(env, submitted["job_id"]), 1)}
    # Result writes on a job of their own, 1,000 rows of 600 characters per transaction.
    path_w = work / "w.jsonl"
    make_input(path_w, write_rows)
    wjob = subprocess.run([str(BIN / "nightshift"), "submit", str(path_w), "--json",
                           "--chunk-size", "1000"], env=env, capture_output=True, text=True,
                          check=True)
    figures["result_rows_per_s"] = round(
        result_write_rate(db_url, json.loads(wjob.stdout)["job_id"], write_rows))
    redis.Redis.from_url(broker).flushdb()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--write-rows", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out["sqlite"] = run(f"sqlite:///{work / 'dp.db'}", args.rows, args.write_rows, work)
        print("sqlite", out["sqlite"], flush=True)
        name = f"nightshift_bench_{os.getpid()}"
        import psycopg

        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        pg_url = args.postgres.rsplit("/", 1)[0] + "/" + name
        try:
            db.upgrade(pg_url)
            out["postgres"] = run(pg_url, args.rows, args.write_rows, work)
            print("postgres", out["postgres"], flush=True)
        finally:
            db.engine_for(pg_url).dispose()
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dataplane.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
