"""The dashboard's pages on a big job: a job of 1,000,000 items with every result written,
then the server time of the jobs page, a results page deep in the job (plain and filtered
by status), an item page, the review queue's next item and the job's page with its
report, on SQLite and PostgreSQL. Medians of 20 requests (the job's page: 2) through the
app in this process (no network), logged in.

    python -m bench.dashboard                  # 1,000,000 items (make bench-dashboard)
    python -m bench.dashboard --rows 100000    # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from fastapi.testclient import TestClient

from bench.dataplane import BIN, RESULTS, WRITE_BATCH, make_input, scratch_database, submit
from schemas import db
from schemas.settings import load

REQUESTS = 20


def fill(db_url: str, job_id: str, rows: int) -> None:
    """Every item answered, one in 50 failed, one in 40 kept for review, chunk by chunk
    as workers write them."""
    from sqlalchemy import update

    from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus
    from worker.attempts import Outcome
    from worker.chunks import write
    from worker.leases import Lease

    with db.engine_for(db_url).begin() as conn:
        conn.execute(update(Item).where(Item.job_id == job_id)
                     .values(status=ItemStatus.RUNNING))
        conn.execute(update(Chunk).where(Chunk.job_id == job_id)
                     .values(status=ChunkStatus.LEASED, lease_owner="bench", deliveries=1))
    for chunk, first in enumerate(range(0, rows, WRITE_BATCH)):
        write(db_url, Lease(job_id, chunk, "bench", 1), [
            Outcome(i, "failed" if i % 50 == 7 else "succeeded", output=f"answer {i} " * 20,
                    quality="failed" if i % 50 == 7 else
                    "needs_review" if i % 40 == 3 else "passed",
                    prompt_tokens=20, completion_tokens=60, finish_reason="stop")
            for i in range(first, min(first + WRITE_BATCH, rows))])


def page_times(db_url: str, broker: str, job_id: str, rows: int) -> dict[str, float]:
    from producer.server import keys, logins
    from producer.server.app import create_app

    settings = load(database_url=db_url, broker_url=broker)
    token = logins.start(db_url, keys.create(db_url, f"bench-{os.getpid()}", admin=True))
    assert token is not None
    client = TestClient(create_app(settings), cookies={logins.COOKIE: token})
    deep = rows - rows // 10
    pages = {"jobs_ms": "/jobs",
             "results_deep_ms": f"/jobs/{job_id}/results?after={deep}",
             "results_deep_failed_ms": f"/jobs/{job_id}/results?after={deep}&status=failed",
             "item_ms": f"/jobs/{job_id}/items/{deep + 7}",
             "review_next_ms": f"/jobs/{job_id}/review",
             # The whole report, read from every result: asked a few times only.
             "job_with_report_ms": f"/jobs/{job_id}"}
    figures = {}
    for name, path in pages.items():
        took = []
        for _ in range(REQUESTS + 2 if name != "job_with_report_ms" else 4):
            start = time.perf_counter()
            answer = client.get(path)
            took.append(time.perf_counter() - start)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        figures[name] = round(statistics.median(took[2:]) * 1000, 1)
    return figures


def run(db_url: str, broker: str, path: Path, rows: int) -> dict[str, Any]:
    env = {**os.environ, "NIGHTSHIFT_DATABASE_URL": db_url, "NIGHTSHIFT_BROKER_URL": broker}
    job_id = submit(env, path, WRITE_BATCH)["job_id"]
    start = time.perf_counter()
    fill(db_url, job_id, rows)
    print(f"  {rows:,} results written in {time.perf_counter() - start:.1f} s", flush=True)
    redis.Redis.from_url(broker).flushdb()
    return {"rows": rows, **page_times(db_url, broker, job_id, rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL: the benchmark creates and drops its own database")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/1",
                        help="a Redis database the benchmark may flush")
    args = parser.parse_args()
    assert BIN.exists()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nightshift-dashboard-") as tmp:
        work = Path(tmp)
        path = work / "rows.jsonl"
        make_input(path, args.rows)
        print("sqlite", flush=True)
        out["sqlite"] = run(f"sqlite:///{work / 'dashboard.db'}", args.broker, path, args.rows)
        print("postgres", flush=True)
        with scratch_database(args.postgres, "nightshift_dashboard") as url:
            out["postgres"] = run(url, args.broker, path, args.rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dashboard.json").write_text(json.dumps(out, indent=2) + "\n")
    names = [k for k in out["sqlite"] if k.endswith("_ms")]
    print(f"{'server time, ms':28}{'sqlite':>10}{'postgres':>10}")
    for key in names:
        print(f"{key:28}{out['sqlite'][key]:>10}{out['postgres'][key]:>10}")


if __name__ == "__main__":
    main()
