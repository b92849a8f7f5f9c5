"""The data plane without the engine, on SQLite and PostgreSQL: submit a large JSONL,
write results in bulk, ask a big job's status. Prints figures and writes them to
bench/results/dataplane.json.

    python -m bench.dataplane                 # 1,000,000 rows (make bench-dataplane)
    python -m bench.dataplane --rows 100000   # a quicker look

Beside nightshift's figures it times plain `sqlite3` parsing and inserting the same
file, plain psycopg COPY writing result rows, and plain psycopg sending the statements
a chunk's write sends, so a run on a busy or slow machine can be read against those
yardsticks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis

from schemas import db

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
OUTPUT = "x" * 600  # a result row's answer, as in the yardstick (bench/README.md)
WRITE_BATCH = 1_000


def make_input(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(f'{{"id": "r{i}", "prompt": "Summarize item {i} in one sentence."}}\n')


def plain_sqlite(path: Path, work: Path) -> float:
    """The yardstick: sqlite3 parsing every line as JSON and inserting it, in batches."""
    target = work / "plain.db"
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE lines (n INTEGER PRIMARY KEY, id TEXT, prompt TEXT)")
    start = time.perf_counter()
    conn.execute("BEGIN")
    with path.open(encoding="utf-8") as fh:
        batch: list[tuple[int, str, str]] = []
        for n, line in enumerate(fh):
            row = json.loads(line)
            batch.append((n, row["id"], row["prompt"]))
            if len(batch) == WRITE_BATCH:
                conn.executemany("INSERT INTO lines VALUES (?, ?, ?)", batch)
                batch.clear()
        conn.executemany("INSERT INTO lines VALUES (?, ?, ?)", batch)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    target.unlink()
    return elapsed


def plain_sqlite_writes(work: Path, rows: int) -> float:
    """The yardstick for result writes: rows/s of plain sqlite3 committing 600-character
    rows in transactions of 1,000, with nightshift's settings (WAL, synchronous=NORMAL).
    Its checkpoints (WAL copied back into the database, two fsyncs) ride on commits as
    nightshift's do, so a slow disk shows here too."""
    target = work / "plain-writes.db"
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE results (job_id TEXT, item_seq INTEGER, status TEXT, "
                 "output TEXT, PRIMARY KEY (job_id, item_seq))")
    job = "0" * 32
    os.sync()
    start = time.perf_counter()
    for first in range(0, rows, WRITE_BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?)",
                         [(job, i, "succeeded", OUTPUT)
                          for i in range(first, min(first + WRITE_BATCH, rows))])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    target.unlink()
    return rows / elapsed


def plain_copy_writes(url: str, rows: int) -> float:
    """The PostgreSQL yardstick for result writes: rows/s of plain psycopg COPY of
    600-character rows into a table keyed as results are, a transaction per 1,000."""
    job = "0" * 32
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE plain_results (job_id TEXT, item_seq INTEGER, "
                     "status TEXT, output TEXT, PRIMARY KEY (job_id, item_seq))")
        conn.commit()
        _settle(url)
        start = time.perf_counter()
        for first in range(0, rows, WRITE_BATCH):
            with conn.cursor().copy("COPY plain_results FROM STDIN") as copy:
                for i in range(first, min(first + WRITE_BATCH, rows)):
                    copy.write_row((job, i, "succeeded", OUTPUT))
            conn.commit()
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE plain_results")
        conn.commit()
    return rows / elapsed


# Started from a small parent: a child's peak RSS counts its parent's pages until exec.
MEASURED = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "open(sys.argv[1], 'w').write(f'{u.ru_maxrss} {u.ru_utime + u.ru_stime}'); "
            "sys.exit(code)")


def submit(env: dict[str, str], path: Path, chunk_size: int) -> dict[str, Any]:
    """`nightshift submit` as a user runs it: wall time, CPU time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        usage = Path(tmp) / "usage"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEASURED, str(usage),
                               str(BIN / "nightshift"), "submit", str(path), "--json",
                               "--chunk-size", str(chunk_size)], env=env, text=True,
                              capture_output=True)
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"nightshift submit failed:\n{done.stderr}")
        peak_kb, cpu_s = usage.read_text().split()
    return {**json.loads(done.stdout), "submit_s": wall, "cpu_s": float(cpu_s),
            "peak_rss_mb": int(peak_kb) / 1024}


def status_figures(env: dict[str, str], job_id: str) -> dict[str, float]:
    """The query in this process (median of 20) and the whole CLI call (median of 5)."""
    from producer.status import status

    url = env["NIGHTSHIFT_DATABASE_URL"]
    status(url, job_id)  # connect and warm
    query = []
    for _ in range(20):
        start = time.perf_counter()
        status(url, job_id)
        query.append(time.perf_counter() - start)
    cli = []
    for _ in range(5):
        start = time.perf_counter()
        done = subprocess.run([str(BIN / "nightshift"), "status", job_id, "--json"], env=env,
                              capture_output=True, text=True, check=True)
        cli.append(time.perf_counter() - start)
    assert json.loads(done.stdout)["job_id"] == job_id
    interpreter = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        interpreter.append(time.perf_counter() - start)
    return {"status_query_ms": round(statistics.median(query) * 1000, 2),
            "status_cli_ms": round(statistics.median(cli) * 1000, 1),
            "python_start_ms": round(statistics.median(interpreter) * 1000, 1)}


def result_write_rate(db_url: str, job_id: str, rows: int) -> float:
    """Rows/s of worker.chunks.write: results inserted and item statuses set, one
    transaction per 1,000 rows of 600 characters, as a worker writes a finished chunk.
    Only `write` is timed: the worker has its outcomes in hand, and its items running
    (claimed, worker.leases), before it writes."""
    from worker.attempts import Outcome
    from worker.chunks import write
    from worker.leases import Lease

    _claim_all(db_url, job_id)
    sampling = {"temperature": 0.0, "max_tokens": 128, "seed": 1}
    elapsed = 0.0
    for chunk, first in enumerate(range(0, rows, WRITE_BATCH)):
        outcomes = [Outcome(i, "succeeded", output=OUTPUT, prompt_tokens=20,
                            completion_tokens=100, finish_reason="stop", sampling=sampling)
                    for i in range(first, min(first + WRITE_BATCH, rows))]
        start = time.perf_counter()
        write(db_url, Lease(job_id, chunk, "bench", 1), outcomes)
        elapsed += time.perf_counter() - start
    return rows / elapsed


# A chunk's write by hand: the statements worker.chunks.write sends around its COPY, with
# no SQLAlchemy and no column picking in Python: the floor for the same work.
BEFORE_COPY = (
    "SELECT id FROM jobs WHERE id = %(job)s FOR UPDATE",
    "UPDATE chunks SET status = 'done', lease_owner = NULL, lease_expires_at = NULL "
    "WHERE job_id = %(job)s AND seq = %(seq)s AND lease_owner = 'bench' AND deliveries = 1 "
    "AND status = 'leased'",
    "DELETE FROM results WHERE job_id = %(job)s AND item_seq BETWEEN %(low)s AND %(high)s")
AFTER_COPY = (
    "UPDATE items SET status = 'succeeded', writes = writes + 1 WHERE job_id = %(job)s "
    "AND status = 'running' AND seq BETWEEN %(low)s AND %(high)s",
    "SELECT seq FROM items WHERE job_id = %(job)s AND same_as BETWEEN %(low)s AND %(high)s",
    "INSERT INTO job_counts (job_id, status, items, prompt_tokens, completion_tokens) "
    "VALUES (%(job)s, 'running', -%(n)s, 0, 0), (%(job)s, 'succeeded', %(n)s, 20 * %(n)s, "
    "100 * %(n)s) ON CONFLICT (job_id, status) DO UPDATE SET "
    "items = job_counts.items + excluded.items, "
    "prompt_tokens = job_counts.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = job_counts.completion_tokens + excluded.completion_tokens",
    "SELECT coalesce(sum(items), 0) FROM job_counts WHERE job_id = %(job)s "
    "AND status IN ('pending', 'running')")
SAME_COPY = ("COPY results (job_id, item_seq, status, output, finish_reason, prompt_tokens, "
             "completion_tokens, sampling, worker, attempts) FROM STDIN")


def plain_same_work_writes(db_url: str, job_id: str, rows: int) -> float:
    """The second PostgreSQL yardstick: rows/s of plain psycopg sending, for each 1,000
    results, the statements worker.chunks.write sends, on a job nightshift submitted."""
    _claim_all(db_url, job_id)
    sampling = json.dumps({"temperature": 0.0, "max_tokens": 128, "seed": 1})
    with psycopg.connect(db_url) as conn:
        start = time.perf_counter()
        for seq, low in enumerate(range(0, rows, WRITE_BATCH)):
            high = min(low + WRITE_BATCH, rows) - 1
            params = {"job": job_id, "seq": seq, "low": low, "high": high,
                      "n": high - low + 1}
            cursor = conn.cursor()
            for statement in BEFORE_COPY:
                cursor.execute(statement, params)
            with cursor.copy(SAME_COPY) as copy:
                for i in range(low, high + 1):
                    copy.write_row((job_id, i, "succeeded", OUTPUT, "stop", 20, 100,
                                    sampling, "bench", 1))
            for statement in AFTER_COPY:
                cursor.execute(statement, params)
            conn.commit()
        elapsed = time.perf_counter() - start
        done = conn.execute(
            "SELECT (SELECT count(*) FROM items WHERE job_id = %(job)s AND status = "
            "'succeeded'), (SELECT count(*) FROM chunks WHERE job_id = %(job)s AND status = "
            "'done')", {"job": job_id}).fetchone()
    assert done == (rows, -(-rows // WRITE_BATCH)), done  # each statement did its work
    return rows / elapsed


def _claim_all(db_url: str, job_id: str) -> None:
    """The job's items running and its chunks leased to "bench", as a claim leaves them;
    the process's objects frozen and the disk synced, so that neither lands in a timing."""
    from sqlalchemy import update

    from schemas.tables import Chunk, ChunkStatus, Item, ItemStatus

    with db.engine_for(db_url).begin() as conn:
        conn.execute(update(Item).where(Item.job_id == job_id)
                     .values(status=ItemStatus.RUNNING))
        conn.execute(update(Chunk).where(Chunk.job_id == job_id)
                     .values(status=ChunkStatus.LEASED, lease_owner="bench", deliveries=1))
    gc.freeze()  # as `nightshift worker` does with what it imported (worker.main)
    _settle(db_url)


def _settle(db_url: str) -> None:
    """The submits' pages written out first, not during the timed writes; on PostgreSQL a
    checkpoint too, so that each timed phase starts with none due (one falling inside a
    phase moved its figure by up to a third)."""
    os.sync()
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")


def run(db_url: str, broker: str, path: Path, rows: int, write_rows: int,
        work: Path) -> dict[str, Any]:
    redis.Redis.from_url(broker).flushdb()
    env = {**os.environ, "NIGHTSHIFT_DATABASE_URL": db_url, "NIGHTSHIFT_BROKER_URL": broker}
    submitted = submit(env, path, 256)
    assert submitted["items"] == rows, submitted
    figures: dict[str, Any] = {
        "rows": rows, "submit_s": round(submitted["submit_s"], 2),
        "submit_rows_per_s": round(rows / submitted["submit_s"]),
        "submit_cpu_s": round(submitted["cpu_s"], 2),
        "submit_peak_rss_mb": round(submitted["peak_rss_mb"], 1),
        "messages": _queued(broker)}
    figures.update(status_figures(env, submitted["job_id"]))
    # Result writes on a job of their own, its chunks of 1,000 items.
    path_w = work / "writes.jsonl"
    make_input(path_w, write_rows)
    wjob = submit(env, path_w, WRITE_BATCH)
    figures["result_rows"] = write_rows
    figures["result_rows_per_s"] = round(result_write_rate(db_url, wjob["job_id"], write_rows))
    from producer.status import status

    done = status(db_url, wjob["job_id"])
    assert done["succeeded"] == write_rows and done["state"] == "completed", done
    redis.Redis.from_url(broker).flushdb()
    return figures


def _queued(broker: str) -> int:
    """Run-chunk messages waiting in Redis (kombu keeps one list per priority step)."""
    client = redis.Redis.from_url(broker)
    return sum(int(client.llen(key)) for key in client.scan_iter("nightshift.*")
               if client.type(key) == b"list")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--write-rows", type=int, default=200_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL: the benchmark creates and drops its own database")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/1",
                        help="a Redis database the benchmark may flush")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    args = parser.parse_args()
    out: dict[str, Any] = {"load_average_at_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="nightshift-dataplane-") as tmp:
        work = Path(tmp)
        path = work / "rows.jsonl"
        make_input(path, args.rows)
        out["plain_sqlite3_s"] = round(plain_sqlite(path, work), 2)
        out["plain_sqlite3_writes_rows_per_s"] = round(plain_sqlite_writes(work,
                                                                          args.write_rows))
        print(f"plain sqlite3: {out['plain_sqlite3_s']} s for {args.rows} rows; result "
              f"rows at {out['plain_sqlite3_writes_rows_per_s']:,}/s", flush=True)
        if args.only != "postgres":
            out["sqlite"] = _against_plain(out, run(f"sqlite:///{work / 'dataplane.db'}",
                                                    args.broker, path, args.rows,
                                                    args.write_rows, work))
            print("sqlite", json.dumps(out["sqlite"]), flush=True)
            _write(out)  # kept if PostgreSQL's part fails
        if args.only != "sqlite":
            out["postgres"] = _against_plain(out, _on_postgres(args, path, work))
            print("postgres", json.dumps(out["postgres"]), flush=True)
        _write(out)
    print(table(out))


def _against_plain(out: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """The figures over plain sqlite3's on the same machine and run: how to compare runs
    on machines of different speed (the data plane's bar is 4.05 and 0.385 of plain
    sqlite3: 15 s and 100,000 rows/s where it takes 3.7 s and writes 260,000 rows/s)."""
    figures["submit_vs_plain_sqlite3"] = round(figures["submit_s"] / out["plain_sqlite3_s"], 2)
    figures["writes_vs_plain_sqlite3"] = round(
        figures["result_rows_per_s"] / out["plain_sqlite3_writes_rows_per_s"], 2)
    return figures


def _write(out: dict[str, Any]) -> None:
    out["load_average_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dataplane.json").write_text(json.dumps(out, indent=2) + "\n")


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A PostgreSQL database of the benchmark's own, at the schema's head; dropped after."""
    name = f"{prefix}_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        db.upgrade(url)
        yield url
    finally:
        db.engine_for(url).dispose()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _on_postgres(args: argparse.Namespace, path: Path, work: Path) -> dict[str, Any]:
    with scratch_database(args.postgres, "nightshift_bench") as url:
        copy_rate = round(plain_copy_writes(url, args.write_rows))
        print(f"plain psycopg COPY: result rows at {copy_rate:,}/s", flush=True)
        figures = run(url, args.broker, path, args.rows, args.write_rows, work)
        env = {**os.environ, "NIGHTSHIFT_DATABASE_URL": url,
               "NIGHTSHIFT_BROKER_URL": args.broker}
        same = submit(env, work / "writes.jsonl", WRITE_BATCH)  # the file run() wrote
        redis.Redis.from_url(args.broker).flushdb()
        same_rate = round(plain_same_work_writes(url, same["job_id"], args.write_rows))
        print(f"plain psycopg, a write's statements: result rows at {same_rate:,}/s",
              flush=True)
        figures["plain_copy_writes_rows_per_s"] = copy_rate
        figures["writes_vs_plain_copy"] = round(figures["result_rows_per_s"] / copy_rate, 2)
        figures["plain_same_work_rows_per_s"] = same_rate
        figures["same_work_vs_plain_copy"] = round(same_rate / copy_rate, 2)
        figures["writes_vs_same_work"] = round(figures["result_rows_per_s"] / same_rate, 2)
        return figures


def table(out: dict[str, Any]) -> str:
    rows = [("submit s (rows/s)", lambda f: f"{f['submit_s']} ({f['submit_rows_per_s']:,})"),
            ("submit peak RSS MB", lambda f: f"{f['submit_peak_rss_mb']}"),
            ("submit / plain sqlite3", lambda f: f"{f['submit_vs_plain_sqlite3']}x"),
            ("result writes rows/s", lambda f: f"{f['result_rows_per_s']:,}"),
            ("writes / plain sqlite3", lambda f: f"{f['writes_vs_plain_sqlite3']}x"),
            ("writes / plain COPY", lambda f: f"{f['writes_vs_plain_copy']}x"
             if "writes_vs_plain_copy" in f else "-"),
            ("same work by hand / COPY", lambda f: f"{f['same_work_vs_plain_copy']}x"
             if "same_work_vs_plain_copy" in f else "-"),
            ("writes / same work", lambda f: f"{f['writes_vs_same_work']}x"
             if "writes_vs_same_work" in f else "-"),
            ("status query ms", lambda f: f"{f['status_query_ms']}"),
            ("status CLI ms", lambda f: f"{f['status_cli_ms']}")]
    backends = [b for b in ("sqlite", "postgres") if b in out]
    lines = [f"{'':24}" + "".join(f"{b:>22}" for b in backends)]
    lines += [f"{label:24}" + "".join(f"{show(out[b]):>22}" for b in backends)
              for label, show in rows]
    lines.append(f"(plain sqlite3 on the same file: {out['plain_sqlite3_s']} s; its result "
                 f"rows: {out['plain_sqlite3_writes_rows_per_s']:,}/s; "
                 f"load average {out['load_average_at_start']:.1f} on {out['cpus']} CPUs)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
