"""A request the real engine refuses fails its own attempt; the worker keeps serving.

The pattern below compiles in Python's `re` (so the answers are checked with it) but
not in vLLM's grammar backends: a constrained retry sends it to the engine, which
refuses that one request. `submit` refuses such a job up front, so the spec is put
into SQL as a job an older submit (or a hand) could have written.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import Stack
from sqlalchemy import select, update

from schemas import db
from schemas.tables import Attempt, Job, Result

# No answer of the demo model holds these digits in a row: every first answer fails.
LOOKAHEAD = r"^(?=.*0123456789).*$"


def test_a_refused_constrained_retry_fails_its_item_alone_and_the_worker_serves_on(
        engine_stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"w{i}", "prompt": f"Name a colour ({i})."})
                            + "\n" for i in range(4)))
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    job = engine_stack.cli_json(
        "submit", str(path), "--json", "--max-tokens", "16", "--temperature", "0",
        "--check", r"regex:pattern=^\d{40}$", "--ladder", "constrain", "--max-attempts", "2",
        "--start-at", later)["job_id"]
    with db.session(engine_stack.db_url) as session, session.begin():
        spec = session.get_one(Job, job).spec
        spec["checks"][0]["params"]["pattern"] = LOOKAHEAD
        session.execute(update(Job).where(Job.id == job).values(
            spec=spec, start_at=datetime.now(UTC)))
    status = engine_stack.wait_final(job, timeout=300)  # a worker's reconcile starts it

    assert (status["state"], status["failed"]) == ("completed", 4)
    with db.session(engine_stack.db_url) as session:
        results = session.scalars(select(Result).where(Result.job_id == job)).all()
        attempts = session.scalars(select(Attempt).where(Attempt.job_id == job,
                                                         Attempt.attempt == 2)).all()
    assert len(results) == 4
    assert all("engine refused" in (r.error or "") and "look" in (r.error or "").lower()
               for r in results)
    assert len(attempts) == 4 and all(a.step == "constrain" for a in attempts)

    again = tmp_path / "again.jsonl"
    again.write_text(json.dumps({"id": "ok", "prompt": "Say hello."}) + "\n")
    served = engine_stack.cli_json("submit", str(again), "--json", "--max-tokens", "8")
    assert engine_stack.wait_final(served["job_id"], timeout=300)["succeeded"] == 1
