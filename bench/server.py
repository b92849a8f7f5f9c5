"""`nightshift serve` under a big batch: the upload and the create of a 100,000-request
file through the real `openai` SDK, timed, and the server's peak memory; then, its
requests answered as a worker writes answers (no engine), its output file's size asked
twice (`files.retrieve`: counted, then kept) and its content read.

    python -m bench.server                    # 100,000 requests, SQLite (make bench-server)
    python -m bench.server --database-url postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import groupby
from operator import itemgetter
from pathlib import Path

import openai
import psutil

BIN = Path(sys.executable).parent
ANSWER = "A summary of the item, as long as a short answer runs. " * 4


def batch_file(path: Path, requests: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(requests):
            fh.write(json.dumps({"custom_id": f"r{i}", "method": "POST",
                                 "url": "/v1/chat/completions",
                                 "body": {"model": "any", "max_tokens": 64, "messages": [
                                     {"role": "user", "content": f"Summarize item {i}."}]}})
                     + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--database-url")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nightshift-serve-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "NIGHTSHIFT_BROKER_URL": args.broker_url,
               "NIGHTSHIFT_DATABASE_URL": args.database_url or f"sqlite:///{work / 'ns.db'}",
               "NIGHTSHIFT_FILES_DIR": str(work / "files")}
        key = json.loads(subprocess.run([str(BIN / "nightshift"), "keys", "create",
                                         f"bench-{os.getpid()}", "--json"], env=env,
                                        check=True, capture_output=True, text=True).stdout)
        path = work / "batch.jsonl"
        batch_file(path, args.requests)
        size_mb = path.stat().st_size / 1e6
        server = subprocess.Popen([str(BIN / "nightshift"), "serve", "--port", str(args.port)],
                                  env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            client = openai.OpenAI(api_key=key["key"], base_url=f"http://127.0.0.1:{args.port}/v1",
                                   max_retries=0, timeout=600)
            _wait(client)
            watched = psutil.Process(server.pid)
            start = time.perf_counter()
            with path.open("rb") as fh:
                file_id = client.files.create(file=("batch.jsonl", fh), purpose="batch").id
            uploaded = time.perf_counter()
            batch = client.batches.create(input_file_id=file_id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")
            created = time.perf_counter()
            assert batch.request_counts is not None, batch
            assert batch.request_counts.total == args.requests, batch
            peak_mb = _peak_rss_mb(watched)
            answer(env["NIGHTSHIFT_DATABASE_URL"], batch.id.removeprefix("batch_"))
            output_id = client.batches.retrieve(batch.id).output_file_id
            assert output_id is not None
            asked = []
            for _ in range(2):
                asking = time.perf_counter()
                size = client.files.retrieve(output_id).bytes
                asked.append(time.perf_counter() - asking)
            reading = time.perf_counter()
            assert len(client.files.content(output_id).content) == size
            read = time.perf_counter() - reading
            output_peak_mb = _peak_rss_mb(watched)
        finally:
            server.terminate()
            server.wait(timeout=30)
    figures = {"requests": args.requests, "file_mb": round(size_mb, 1),
               "upload_s": round(uploaded - start, 2), "create_s": round(created - uploaded, 2),
               "server_peak_rss_mb": peak_mb, "output_mb": round(size / 1e6, 1),
               "retrieve_counted_s": round(asked[0], 3), "retrieve_kept_s": round(asked[1], 3),
               "content_s": round(read, 2),
               "server_peak_rss_mb_with_output": output_peak_mb}
    print(json.dumps(figures))


def answer(db_url: str, job_id: str) -> None:
    """Every request answered, chunk by chunk, as a worker writes its answers."""
    from sqlalchemy import select

    from schemas import db
    from schemas.tables import Item
    from worker import leases
    from worker.attempts import Outcome
    from worker.chunks import write

    with db.reader(db_url) as session:
        items = session.execute(select(Item.chunk, Item.seq).where(Item.job_id == job_id)
                                .order_by(Item.chunk)).all()
    for chunk, rows in groupby(items, key=itemgetter(0)):
        lease = leases.claim(db_url, job_id, chunk, "bench", 60)
        assert lease is not None, chunk
        write(db_url, lease, [Outcome(seq, "succeeded", output=ANSWER, prompt_tokens=12,
                                      completion_tokens=48, finish_reason="stop")
                              for _, seq in rows])


def _wait(client: openai.OpenAI) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            client.files.list()
            return
        except openai.APIConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _peak_rss_mb(process: psutil.Process) -> float:
    """Linux's high-water mark of the server's resident memory (VmHWM)."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(process.memory_info().rss / 2**20, 1)


if __name__ == "__main__":
    main()
