"""The faults, one scenario at a time, each on a fresh job of its own.

Each scenario injects its fault mid-job, waits for the job to end (supervising the fleet:
an exited worker is started again), and returns a Report: the verdict on the job and
the fleet (schemas of what must hold: bench.chaos.harness.Verdict), and how long the job
took to recover. What "recovered" means depends on the fault: for a worker's fault, every
chunk that worker held is done (by another, or by itself started again); for a server
restart, a chunk that was waiting at the restart is done (progress resumes).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update

from bench.chaos.fleet import Worker
from bench.chaos.harness import Harness, JobEnded, Monitor, Verdict
from schemas import db
from schemas.tables import (
    Attempt,
    Chunk,
    ChunkStatus,
    Item,
    ItemStatus,
    Job,
    JobState,
    Result,
    utcnow,
)


@dataclass(frozen=True)
class Size:
    """How big each scenario's job is, and how long it may take to end after its fault."""

    items: int
    chunk_size: int
    timeout: float
    max_tokens: int = 16
    # Progress (a share of items answered) at which a server is restarted.
    mid_job: float = 0.25
    # ... and a worker paused past its lease: late, where the backlog its chunks wait behind
    # to be taken over is short, so that it wakes well within the stall limit.
    late_job: float = 0.8


# A scenario whose job ended before its fault could be injected runs on a fresh job.
JOBS_PER_FAULT = 3

# `make test`: small jobs, a few chunks per worker slot.
SHORT = Size(items=96, chunk_size=4, timeout=240, late_job=0.5)
# `make chaos`: the full version.
FULL = Size(items=500, chunk_size=8, timeout=900)


@dataclass
class Report:
    scenario: str
    job: str = ""
    verdict: Verdict | None = None
    # Fault injected -> recovered (see the module's docstring), and -> job completed.
    recover_s: float | None = None
    complete_s: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def all_problems(self) -> list[str]:
        return self.problems + (self.verdict.problems if self.verdict else ["no verdict"])

    @property
    def ok(self) -> bool:
        return not self.all_problems


@dataclass
class Fault:
    """When a fault was injected, the chunks it interrupted, and owners that lost chunks."""

    at: float
    interrupted: set[int]
    # "all": recovered once every interrupted chunk is done; "first": once one is.
    until: str = "all"
    stale: dict[int, set[str]] = field(default_factory=dict)


def prompts(n: int) -> list[dict[str, str]]:
    return [{"id": f"k{i}", "prompt": f"Write a sentence about the number {i}."}
            for i in range(n)]


def _run(h: Harness, name: str, size: Size, inject: Callable[[str], Fault],
         rows: list[dict[str, str]] | None = None, options: tuple[str, ...] = (),
         submit: Callable[[], str] | None = None, timeout: float | None = None,
         settle: Callable[[Report], None] | None = None) -> Report:
    """Submit a job, inject the fault, wait for the job to end (and for `settle`: what
    the fleet must do after), judge it."""
    assert h.fleet is not None
    h.fleet.ensure_ready()
    exits = {w.name: len(w.exits) for w in h.workers}
    fault = None
    for n in range(1, JOBS_PER_FAULT + 1):
        job = submit() if submit else h.submit(
            rows or prompts(size.items), "--chunk-size", str(size.chunk_size), "--max-tokens",
            str(size.max_tokens), *options)
        report = Report(name, job)
        monitor = Monitor(h.db_url, job)
        try:
            fault = inject(job)
        except JobEnded as exc:  # too quick to catch: nothing was injected, so a fresh job
            if n < JOBS_PER_FAULT:
                monitor.stop()
                continue
            report.problems.append(f"{exc}, {n} jobs in a row ({h.describe(job)})")
        except TimeoutError as exc:  # the fault went wrong: does the job still end?
            report.problems.append(f"{exc} ({h.describe(job)})")
        break
    try:
        limit = timeout or size.timeout
        if not h.wait_completed(job, limit):
            report.problems.append(f"job not ended {limit:.0f}s after the fault")
        if settle is not None:
            settle(report)
    finally:
        time.sleep(monitor.every * 2)
        monitor.stop()
    report.verdict = h.verdict(job, fault.stale if fault else None)
    exited = {w.name: w.exits[exits[w.name]:] for w in h.workers if w.exits[exits[w.name]:]}
    if exited:
        report.notes.append(f"workers exited (code): {exited}")
    if fault is not None:
        recovered = (monitor.all_done_at(fault.interrupted) if fault.until == "all"
                     else min((monitor.done_at[s] for s in fault.interrupted
                               if s in monitor.done_at), default=None))
        if monitor.completed_at is not None:
            report.complete_s = monitor.completed_at - fault.at
            # A chunk's end and its job's commit together: one look may see only the job's.
            recovered = min(recovered or monitor.completed_at, monitor.completed_at)
        report.recover_s = None if recovered is None else max(0.0, recovered - fault.at)
    return report


def _progress(h: Harness, job: str, size: Size, share: float | None = None) -> None:
    target = max(1, int((share or size.mid_job) * size.items))
    h.wait_for(f"{target} items answered", lambda: h.final_items(job) >= target, size.timeout)


def _a_worker_holding(h: Harness, job: str, rng: random.Random, timeout: float
                      ) -> tuple[Worker, str]:
    """A ready worker that holds a lease on the job now, picked at random (JobEnded if
    the job ends first)."""
    looks: list[set[str]] = []

    def holders() -> list[tuple[Worker, str]]:
        if h.state(job) in JobState.FINAL:
            seen = sorted(set().union(*looks))
            raise JobEnded(f"job {job} ended before a worker was seen holding a chunk "
                           f"({len(looks)} looks; leases held by {seen or 'no one'})")
        looks.append(h.lease_owners(job))
        found = []
        for w in h.workers:
            if w.alive() and w.ready():
                owner = w.owner()
                if h.leased_by(job, owner):
                    found.append((w, owner))
        return found

    return rng.choice(h.wait_for("a worker holding a chunk", holders, timeout, every=0.05))


# 1. SIGKILL of a worker's whole process group, three times, at random moments.

def sigkill(h: Harness, size: Size, rng: random.Random, kills: int = 3) -> Report:
    def inject(job: str) -> Fault:
        first, interrupted = None, set()
        for n in range(kills):
            try:
                victim, owner = _a_worker_holding(h, job, rng, size.timeout)
            except JobEnded:
                if n == 0:
                    raise
                notes.append(f"the job ended after {n} kills")
                break
            time.sleep(rng.uniform(0.0, 1.5))  # somewhere within its chunks' work
            interrupted |= set(h.leased_by(job, owner))
            victim.kill()
            first = first or time.monotonic()
            victim.start()  # as its supervisor would
        return Fault(first or time.monotonic(), interrupted)

    notes: list[str] = []
    report = _run(h, "sigkill x3", size, inject)
    report.notes += notes
    return report


# 2. A Redis restart mid-job: every message on the broker is lost.

def redis_restart(h: Harness, size: Size, rng: random.Random) -> Report:
    return _server_restart(h, "redis restart", size, h.redis.restart)


# 3. A PostgreSQL restart mid-job: every connection dropped.

def postgres_restart(h: Harness, size: Size, rng: random.Random) -> Report:
    return _server_restart(h, "postgres restart", size, h.postgres.restart)


def _server_restart(h: Harness, name: str, size: Size, restart: Callable[[], None]
                    ) -> Report:
    """Recovered once a chunk that waited for a worker at the restart is done."""
    def inject(job: str) -> Fault:
        _progress(h, job, size)
        waiting = _pending_chunks(h, job)
        at = time.monotonic()
        restart()
        return Fault(at, waiting or h.open_chunks(job), until="first")

    return _run(h, name, size, inject)


def _pending_chunks(h: Harness, job: str) -> set[int]:
    with db.session(h.db_url) as session:
        return set(session.scalars(select(Chunk.seq).where(Chunk.job_id == job,
                                                           Chunk.status == ChunkStatus.PENDING)))


# 4. SIGSTOP of a worker past its lease, until another worker finished its chunks; then
#    SIGCONT: the stale owner's late write must change nothing.

def stale_owner(h: Harness, size: Size, rng: random.Random) -> Report:
    def inject(job: str) -> Fault:
        _progress(h, job, size, size.late_job)
        held: dict[int, int] = {}
        while not held:  # its chunks may have ended between the look and the stop
            victim, owner = _a_worker_holding(h, job, rng, size.timeout)
            os.kill(victim.pid, signal.SIGSTOP)  # the process only: its engine core runs on
            at = time.monotonic()
            held = h.leased_by(job, owner)
            if not held:
                os.kill(victim.pid, signal.SIGCONT)
        log_start = victim.log.stat().st_size
        try:
            h.wait_for("the stopped worker's chunks finished by another",
                       lambda: _finished(h, job, held),
                       min(size.timeout, 10 * h.options.lease_seconds + 60))
        finally:
            os.kill(victim.pid, signal.SIGCONT)
            stopped_for = time.monotonic() - at
        taken = {seq for seq, d in _deliveries(h, job, held).items() if d > held[seq]}
        # Long enough for the stale owner's heartbeat and its chunks' writes to come due.
        time.sleep(max(5.0, h.options.lease_seconds))
        with victim.log.open("rb") as log:
            log.seek(log_start)
            woke = log.read()
        notes.append(f"stopped {owner} {stopped_for:.0f}s holding chunks {sorted(held)}, "
                     f"{len(taken)} taken over by another; on waking it saw "
                     f"{woke.count(b'lost the lease on chunk')} leases lost, "
                     f"{woke.count(b'nothing of this run is written')} writes refused")
        if not taken:
            problems.append("no chunk of the stopped worker was taken over: nothing tested")
        return Fault(at, set(held), stale={seq: {owner} for seq in taken})

    notes: list[str] = []
    problems: list[str] = []
    report = _run(h, "stale owner", size, inject)
    report.notes[:0] = notes
    report.problems += problems
    return report


def _deliveries(h: Harness, job: str, seqs: dict[int, int]) -> dict[int, int]:
    with db.session(h.db_url) as session:
        return dict(session.execute(select(Chunk.seq, Chunk.deliveries).where(  # type: ignore[arg-type]
            Chunk.job_id == job, Chunk.seq.in_(seqs))).all())


def _finished(h: Harness, job: str, seqs: dict[int, int]) -> bool:
    with db.session(h.db_url) as session:
        return session.execute(select(Chunk.seq).where(
            Chunk.job_id == job, Chunk.seq.in_(seqs), Chunk.status != ChunkStatus.DONE)
        ).first() is None


# 5. A stalled engine: the engine core of a worker SIGSTOPped. The worker must see that
#    its engine finishes no step, hand its chunks back and exit 70; it is started again.

def stalled_engine(h: Harness, size: Size, rng: random.Random) -> Report:
    stall = h.options.stall_seconds
    # The worker whose engine core was stopped, its start count and exits at that moment.
    stopped: list[tuple[Worker, int, int]] = []

    def inject(job: str) -> Fault:
        victim, owner = _a_worker_holding(h, job, rng, size.timeout)
        held = h.leased_by(job, owner)
        victim.engine_core().suspend()
        stopped.append((victim, victim.starts, len(victim.exits)))
        return Fault(time.monotonic(), set(held))

    def settle(report: Report) -> None:
        for w, starts, _ in stopped:  # its chunks went to another; it must go too
            try:
                h.wait_for(f"{w.name} exited", lambda w=w, n=starts: w.starts > n,
                           2 * (stall or 30) + 30)
            except TimeoutError as exc:
                report.problems.append(str(exc))

    # Bounded: a worker blind to the stall renews its leases for ever.
    limit = min(size.timeout, 3 * (stall or 30) + 6 * h.options.lease_seconds + 60)
    try:
        report = _run(h, "stalled engine", size, inject, timeout=limit, settle=settle)
    finally:
        for w, starts, _ in stopped:  # whatever happened, the next scenario gets a
            if w.alive() and w.starts == starts:  # healthy fleet
                w.kill()
    if stall is None:
        report.problems.append("the worker has no --stall-seconds option")
    for w, _, exits in stopped:
        codes = w.exits[exits:]
        if codes[:1] != [70]:
            report.problems.append(f"{w.name} with a stopped engine exited {codes or 'never'}"
                                   ", not 70")
    return report


# 6. A request the engine refuses: a regex its grammar backend cannot compile (Python's re
#    accepts the lookahead). Those items fail alone, with the engine's reason; the
#    workers keep serving.

REFUSED_PATTERN = r"^(?=.*\d).*$"


def refused_request(h: Harness, size: Size, rng: random.Random) -> Report:
    rows = [{"id": f"k{i}", "prompt": (f"What is {i} plus {i}? Answer with the number."
                                       if i % 2 else "Name a colour, in one word.")}
            for i in range(size.items)]
    options = ("--chunk-size", str(size.chunk_size), "--max-tokens", str(size.max_tokens),
               "--ladder", "constrain", "--max-attempts", "2")
    how: list[str] = []

    def submit() -> str:
        path = h.write_input(rows)
        done = h.cli("submit", str(path), "--json", *options, "--check",
                     f"regex:pattern={REFUSED_PATTERN}", check=False)
        if done.returncode == 0:
            how.append("submitted")
            return str(json.loads(done.stdout)["job_id"])
        how.append(f"refused at submit (exit {done.returncode}: "
                   f"{done.stderr.strip().splitlines()[-1]}); written into jobs.spec")
        return _write_pattern_into_spec(h, path, options)

    assert h.fleet is not None
    h.fleet.ensure_ready()
    exits = {w.name: list(w.exits) for w in h.workers}
    report = _run(h, "refused request", size, lambda job: Fault(time.monotonic(), set()),
                  submit=submit)
    report.recover_s = None
    report.notes += how
    for w in h.workers:
        if w.exits != exits[w.name]:
            report.problems.append(f"{w.name} exited {w.exits[len(exits[w.name]):]}")
    if report.verdict is not None and report.verdict.state == "completed":
        report.problems += _refusals_alone(h, report)
    return report


def _write_pattern_into_spec(h: Harness, path: object, options: tuple[str, ...]) -> str:
    """A job held until later with a pattern the engine compiles, whose spec is changed in
    SQL to the refused pattern (as a hand-written spec would be), then started."""
    later = (datetime.now() + timedelta(hours=2)).strftime("%H:%M")
    done = h.cli("submit", str(path), "--json", *options, "--check", r"regex:pattern=^.*\d.*$",
                 "--start-at", later)
    job = str(json.loads(done.stdout)["job_id"])
    with db.session(h.db_url) as session, session.begin():
        spec = session.get_one(Job, job).spec
        for check in spec["checks"]:
            check["params"]["pattern"] = REFUSED_PATTERN
        session.execute(update(Job).where(Job.id == job).values(
            spec=spec, start_at=utcnow() - timedelta(seconds=1)))
    return job


def _refusals_alone(h: Harness, report: Report) -> list[str]:
    """The refused items failed with a reason; the others of their chunks succeeded."""
    problems = []
    with db.session(h.db_url) as session:
        job = report.job
        failed = session.execute(select(Result.item_seq, Result.error).where(
            Result.job_id == job, Result.status == ItemStatus.FAILED)).all()
        succeeded = session.scalar(select(Item.seq).where(Item.job_id == job,
                                                          Item.status == ItemStatus.SUCCEEDED))
        constrained = session.scalar(select(Attempt.item_seq).where(Attempt.job_id == job,
                                                                    Attempt.step == "constrain"))
    if not failed:
        problems.append("no item failed: the refused retry never ran")
    if succeeded is None:
        problems.append("no item succeeded beside the refused ones")
    reasons = {str(e).splitlines()[0][:120] for _, e in failed}
    if any(not e or "poison" in e or "died" in e for _, e in failed):
        problems.append(f"refused items failed without the engine's reason: {reasons}")
    report.notes.append(f"{len(failed)} failed ({'; '.join(sorted(reasons))[:200]}); "
                        f"constrained attempts in the ledger: {constrained is not None}")
    return problems


# In the order they run: those that restart workers last, so that fewer restarts are
# waited for.
SCENARIOS: dict[str, Callable[[Harness, Size, random.Random], Report]] = {
    "redis": redis_restart,
    "postgres": postgres_restart,
    "stale": stale_owner,
    "refused": refused_request,
    "sigkill": sigkill,
    "stall": stalled_engine,
}
