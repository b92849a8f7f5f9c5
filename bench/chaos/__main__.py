"""`make chaos`: every scenario on a job of 500 items, then a table. Exits 1 if any scenario
lost, duplicated or miscounted an item, left a stale owner's answer, or hung."""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace

from bench.chaos.harness import Harness, Options
from bench.chaos.scenarios import FULL, SCENARIOS, SHORT, Report

LEASE_SECONDS = 6.0
STALL_SECONDS = 20.0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("-s", "--scenario", action="append", choices=list(SCENARIOS),
                        help="Run only these (repeat) [default: all, in order].")
    parser.add_argument("--short", action="store_true",
                        help="The test suite's short version (small jobs).")
    parser.add_argument("-n", "--items", type=int, help=f"[default: {FULL.items}]")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    parser.add_argument("--keep", action="store_true", help="Keep the work directory (logs).")
    args = parser.parse_args()
    size = SHORT if args.short else FULL
    size = replace(size, items=args.items or size.items)
    rng = random.Random(args.seed)
    started = time.monotonic()
    reports: list[Report] = []
    options = Options(lease_seconds=LEASE_SECONDS, stall_seconds=STALL_SECONDS)
    with Harness(options, keep=args.keep) as h:
        print(f"servers and two workers ready in {time.monotonic() - started:.0f}s "
              f"(work directory {h.dir}, seed {args.seed})", flush=True)
        for name in args.scenario or list(SCENARIOS):
            began = time.monotonic()
            try:
                reports.append(SCENARIOS[name](h, size, rng))
            except Exception as exc:  # the table still shows the others
                reports.append(Report(name, problems=[f"crashed: {exc!r}"]))
            print(f"{name}: {time.monotonic() - began:.0f}s", flush=True)
    print(table(reports))
    print(f"\nwall time {time.monotonic() - started:.0f}s")
    return 0 if all(r.ok for r in reports) else 1


def table(reports: list[Report]) -> str:
    head = ("scenario", "items", "lost", "duplicated", "stale", "recover s", "complete s",
            "verdict")
    rows: list[tuple[str, ...]] = [head]
    for r in reports:
        v = r.verdict
        rows.append((r.scenario, *(str(getattr(v, k)) if v else "?"
                                   for k in ("items", "lost", "duplicated", "stale")),
                     _seconds(r.recover_s), _seconds(r.complete_s),
                     "ok" if r.ok else "; ".join(r.all_problems)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  "
             + row[-1] for row in rows]
    notes = [f"  {r.scenario}: {n}" for r in reports for n in r.notes]
    return "\n".join([*lines, "", "notes:", *notes])


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
