"""`make bench-quality`: does the bar raise quality on the demo model, and at what cost?

Open-ended prompts (bench/prompts.py), greedy, at most 128 new tokens, through
nightshift end to end with the checks {not_truncated, no_repetition, relevance,
judge:min=3} and 3 attempts per item. Prints `nightshift report`'s figures (first-try
and after-retries pass rates, failures by check, retry tokens) and writes them to
bench/results/quality.json; the job's database stays in bench/results/quality/ for SQL.

With --baseline the same file runs again with `--max-attempts 1` (a fresh worker and
database): retries killed, its pass rate is the first try's, measured rather than read
off the ledger. The two can differ by an answer or two: a CPU's logits move slightly
with the batch's shape, and the baseline's batches hold no retries.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench.prompts import make_batch_file
from bench.run import RESULTS, engine_kwargs, run_nightshift
from quality import report

CHECKS = ("not_truncated", "no_repetition", "relevance", "judge:min=3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, help="OpenAI batch file [default: generated]")
    parser.add_argument("-n", type=int, default=256, help="prompts to generate")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--check", action="append", help=f"[default: {', '.join(CHECKS)}]")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the file with --max-attempts 1")
    args = parser.parse_args()
    work = RESULTS / "quality"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = args.input or make_batch_file(work / "prompts.jsonl", args.n, args.max_tokens)
    bar = [f for check in args.check or CHECKS for f in ("--check", check)]
    flags = ["--max-attempts", str(args.max_attempts), *bar]
    engine = engine_kwargs(args)
    night = run_nightshift(path, engine, work, args.broker_url, tuple(flags))
    shown = report.build(night["db_url"], night["job_id"])
    shown.update(wall_s=round(night["wall_s"], 1), generated_tokens_per_s=round(
        night["tokens"] / night["gen_s"], 1), database=night["db_url"], submit_flags=flags)
    if args.baseline:
        (work / "baseline").mkdir()
        base = run_nightshift(path, engine, work / "baseline", args.broker_url,
                              ("--max-attempts", "1", *bar))
        shown["baseline_max_attempts_1"] = report.build(base["db_url"], base["job_id"])[
            "final_pass_rate"]
    (RESULTS / "quality.json").write_text(json.dumps(shown, indent=2) + "\n")
    print(report.text(shown))
    if args.baseline:
        print(f"with --max-attempts 1: pass rate {shown['baseline_max_attempts_1']:.1%} "
              f"(first try above: {shown['first_try_pass_rate']:.1%})")
    print(json.dumps(shown))


if __name__ == "__main__":
    main()
