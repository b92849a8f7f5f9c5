"""The read side for people and scripts: job state and counts, cancel.

Reads go through the database's own driver (schemas.dbapi): `nightshift status`
answers in a fraction of a second, most of it Python's start.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas import dbapi
from schemas.errors import AmbiguousJob, JobNotFound
from schemas.states import ItemStatus, JobState, WorkerState, minutes

COUNTED = (ItemStatus.PENDING, ItemStatus.RUNNING, ItemStatus.SUCCEEDED, ItemStatus.FAILED,
           ItemStatus.CANCELLED)
# The shortest prefix a JOB argument may be: six hex characters tell some 16 million ids
# apart, and `watch` shows eight.
MIN_PREFIX = 6
# How many of the jobs an ambiguous prefix matches its error lists.
LISTED_MATCHES = 5


def resolve(db_url: str, given: str) -> str:
    """The full id of the job a JOB argument names: the id, or a unique prefix of it of at
    least `MIN_PREFIX` characters, as git and docker take them."""
    if len(given) < MIN_PREFIX:
        raise AmbiguousJob(f"job {given!r} is too short: give at least {MIN_PREFIX} "
                           "characters of its id (see `nightshift status`)")
    pattern = given.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    with dbapi.reader(db_url) as db:
        found = [job_id for job_id, in db.rows(
            "SELECT id FROM jobs WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT ?",
            (pattern, LISTED_MATCHES + 1))]
    if not found:
        raise JobNotFound(f"no job {given!r} in this database (see `nightshift status`)")
    if len(found) > 1 and found[0] != given:
        listed = ", ".join(found[:LISTED_MATCHES]) + (", ..." if len(found) > LISTED_MATCHES
                                                       else "")
        raise AmbiguousJob(f"job {given!r} is the start of several jobs' ids ({listed}): "
                           "give more characters")
    return found[0]


def status(db_url: str, job_id: str) -> dict[str, Any]:
    with dbapi.reader(db_url) as db:
        jobs = db.rows(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not jobs:
            raise JobNotFound(f"no job {job_id!r} in this database (see `nightshift status`)")
        counts: dict[str, int] = {}
        tokens = [0, 0]
        for item_status, items, prompt, completion in db.rows(
                "SELECT status, items, prompt_tokens, completion_tokens FROM job_counts "
                "WHERE job_id = ?", (job_id,)):
            counts[item_status] = items
            tokens[0] += prompt
            tokens[1] += completion
        shown = _shape(jobs[0], counts, tokens)
        _note_unserved(db, [shown])
        return shown


def all_jobs(db_url: str, *, limit: int = 50, state: str | None = None,
             model: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
    """The latest jobs, newest first; only those in `state`, of `model`, or of the Batch
    API batches of the key `owner`, when given."""
    where: list[str] = []
    params: list[Any] = []
    for clause, value in (("state = ?", state), ("model = ?", model),
                          ("id IN (SELECT job_id FROM batches WHERE owner = ?)", owner)):
        if value is not None:
            where.append(clause)
            params.append(value)
    filtered = f"WHERE {' AND '.join(where)} " if where else ""
    with dbapi.reader(db_url) as db:
        jobs = db.rows(f"SELECT {JOB_COLUMNS} FROM jobs {filtered}ORDER BY created_at DESC "
                       "LIMIT ?", (*params, limit))
        counts: dict[str, dict[str, int]] = {job[0]: {} for job in jobs}
        tokens = {job[0]: [0, 0] for job in jobs}
        if counts:
            marks = ", ".join("?" * len(counts))
            for job_id, item_status, n, prompt, completion in db.rows(
                    "SELECT job_id, status, items, prompt_tokens, completion_tokens "
                    f"FROM job_counts WHERE job_id IN ({marks})", tuple(counts)):
                counts[job_id][item_status] = n
                tokens[job_id][0] += prompt
                tokens[job_id][1] += completion
        shown = [_shape(job, counts[job[0]], tokens[job[0]]) for job in jobs]
        _note_unserved(db, shown)
        return shown


# The columns of a job that status shows, in _shape's order.
STAMPS = ("created_at", "started_at", "finished_at", "start_at", "deadline")
JOB_COLUMNS = ", ".join(("id", "state", "kind", "model", "total", "priority", *STAMPS))


def _shape(job: tuple[Any, ...], counts: dict[str, int], tokens: Any) -> dict[str, Any]:
    job_id, state, kind, model, total, priority, *stamps = job
    when = dict(zip(STAMPS, map(dbapi.when, stamps), strict=True))
    shaped: dict[str, Any] = {"job_id": job_id, "state": state, "kind": kind,
                              "model": model, "total": total}
    shaped.update({name: counts.get(name, 0) for name in COUNTED})
    if tokens is not None:
        shaped["prompt_tokens"], shaped["completion_tokens"] = int(tokens[0]), int(tokens[1])
    shaped.update({stamp: value.isoformat() if value else None for stamp, value in when.items()})
    shaped["priority"] = priority
    shaped["reason"] = _reason(state, when)
    return shaped


def _reason(state: str, when: dict[str, datetime | None]) -> str | None:
    """Why a job is where it is, when its counts alone do not say."""
    start_at, deadline, finished_at = when["start_at"], when["deadline"], when["finished_at"]
    if state == JobState.SCHEDULED and start_at:
        return f"starts at {start_at.astimezone():%Y-%m-%d %H:%M %Z}"
    if state == JobState.CANCELLED and deadline and finished_at and finished_at >= deadline:
        return (f"deadline {deadline.astimezone():%Y-%m-%d %H:%M %Z} passed: "
                "its pending items were cancelled")
    return None


def _note_unserved(db: dbapi.Reader, shown: list[dict[str, Any]]) -> None:
    """A job that no live worker can take waits: its reason says so, and for which model
    (a typo in a model name is otherwise a job that waits forever)."""
    waiting = [job for job in shown if job["state"] in (JobState.QUEUED, JobState.RUNNING)
               and not job["reason"]]
    if not waiting:
        return
    live = {model for model, in db.rows(
        "SELECT DISTINCT model FROM workers WHERE state = ? AND last_heartbeat_at >= ?",
        (WorkerState.RUNNING, db.stamp(db.now() - WorkerState.LIVE)))}
    for job in waiting:
        if job["model"] not in live:
            job["reason"] = (f"waiting: no worker for model {job['model']} seen in the last "
                             f"{minutes()}")


def cancel(db_url: str, job_id: str) -> tuple[bool, dict[str, Any]]:
    """Stop a job: its pending items are cancelled; chunks already running finish. Returns
    whether it was stopped (False: it had ended already, and stays as it was)."""
    from schemas import db
    from schemas.tables import Job
    from worker.cancel import stop

    with db.session(db_url) as session, session.begin():
        # Locked: a chunk completing the job at this moment goes first, or after.
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} in this database (see `nightshift status`)")
        stopped = stop(session, job, db.clock(session))
    return stopped, status(db_url, job_id)

