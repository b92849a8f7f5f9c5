"""The worker's engine defaults, measured: vLLM offline generation on the benchmark's
prompts under each setting that matters for batch work, one fresh engine per setting.
Prints a table and writes bench/results/engine_options.json.

    python -m bench.engine_options               # make bench-engine
    python -m bench.engine_options -n 64         # a quicker look

Steady-state generated tokens/s is what a worker's defaults should maximise; start-up is
shown beside it. The baseline is nightshift's own CPU defaults (worker.engine).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.prompts import make_batch_file
from bench.run import RESULTS, run_offline
from schemas.settings import load
from worker.engine import EngineOptions
from worker.models import resolve

# Each setting changes the defaults in one way; "defaults" is what a worker runs with.
SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "max_num_seqs=64": {"max_num_seqs": 64},
    "max_num_batched_tokens=8192": {"max_num_batched_tokens": 8192},
    "no prefix caching": {"enable_prefix_caching": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=256, help="prompts")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--only", action="append", choices=list(SETTINGS))
    args = parser.parse_args()
    names = args.only or list(SETTINGS)
    settings = load()
    model = str(resolve(settings.model, settings.model_dir))
    from vllm.platforms import current_platform

    rows: dict[str, Any] = {"prompts": args.n, "max_tokens": args.max_tokens,
                            "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="nightshift-engine-") as tmp:
        path = make_batch_file(Path(tmp) / "prompts.jsonl", args.n, args.max_tokens)
        for name in names:
            options = EngineOptions(kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30),
                                    max_model_len=2048, **SETTINGS[name])
            got = run_offline(path, model, options.for_platform(current_platform.is_cpu()))
            rows[name] = {"tok_s": round(got["tokens"] / got["gen_s"], 1),
                          "gen_s": round(got["gen_s"], 1), "start_s": round(got["start_s"], 1),
                          "tokens": got["tokens"]}
            print(f"{name:30s} {rows[name]}", flush=True)
    rows["load_average_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_options.json").write_text(json.dumps(rows, indent=2) + "\n")
    base = rows.get("defaults", {}).get("tok_s")
    print(f"\n{'setting':30s} {'tok/s':>8s} {'vs defaults':>12s} {'start s':>8s}")
    for name in names:
        r = rows[name]
        ratio = f"{r['tok_s'] / base:.2f}" if base else "-"
        print(f"{name:30s} {r['tok_s']:8.1f} {ratio:>12s} {r['start_s']:8.1f}")


if __name__ == "__main__":
    main()
