"""`nightshift serve` under a big batch: the upload and the create of a 100,000-request
file through the real `openai` SDK, timed, and the server's peak memory. No worker.

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
from pathlib import Path

import openai
import psutil

BIN = Path(sys.executable).parent


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
        finally:
            server.terminate()
            server.wait(timeout=30)
    figures = {"requests": args.requests, "file_mb": round(size_mb, 1),
               "upload_s": round(uploaded - start, 2), "create_s": round(created - uploaded, 2),
               "server_peak_rss_mb": peak_mb}
    print(json.dumps(figures))


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
