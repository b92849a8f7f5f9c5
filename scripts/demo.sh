#!/usr/bin/env bash
# `make demo`: the main job on the embedded defaults. SQLite at ./nightshift.db, the
# Redis at the default URL, the demo model; a worker is started and stopped here.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=.venv/bin/nightshift
mkdir -p .demo

$NS db upgrade
# NIGHTSHIFT_DEMO_WORKER_ARGS: worker options for a machine already busy (the tests give
# it a fixed KV cache, as engines started beside it take a share of the memory).
# shellcheck disable=SC2086
$NS worker --loglevel WARNING ${NIGHTSHIFT_DEMO_WORKER_ARGS:-} > .demo/worker.log 2>&1 &
WORKER=$!
trap 'kill -TERM $WORKER 2>/dev/null; wait $WORKER 2>/dev/null || true' EXIT

# The quality bar: a cut-off or looping answer is asked again, better (up to 3 answers).
JOB=$($NS submit producer/examples/questions.jsonl --max-tokens 96 --json \
      --check not_truncated --check no_repetition \
      | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
echo "submitted job $JOB; the worker loads the model first (about a minute on a CPU)"
$NS watch "$JOB"
$NS status "$JOB"
echo
$NS report "$JOB"
echo
echo "a few results, read back from SQL ($NS results $JOB):"
$NS results "$JOB" -o .demo/results.jsonl
head -n 5 .demo/results.jsonl | .venv/bin/python -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    text = (r["output"] or r["error"] or "").strip()[:200]
    print("[" + r["id"] + "] " + r["status"] + " (" + str(r["attempts"]) + " attempts): "
          + text + "\n")'
