"""The read side for people and scripts: job state and counts, cancel."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from schemas import db
from schemas.errors import AmbiguousJob, JobNotFound
from schemas.tables import ItemStatus, Job, JobCount, JobState
from worker import presence
from worker.cancel import stop

COUNTED = (ItemStatus.PENDING, ItemStatus.RUNNING, ItemStatus.SUCCEEDED, ItemStatus.FAILED,
           ItemStatus.CANCELLED)
# The shortest prefix a JOB argument may be: six hex characters tell some 16 million ids
# apart, and `watch` shows eight.
MIN_PREFIX = 6
# How many of the jobs an ambiguous prefix matches its error lists.
LISTED_MATCHES = 5


def _job(s: Any, job_id: str, *, lock: bool = False) -> Job:
    job = s.get(Job, job_id, with_for_update=lock)
    if job is None:
        raise JobNotFound(f"no job {job_id!r} in this database (see `nightshift status`)")
    return job


def resolve(db_url: str, given: str) -> str:
    """The full id of the job a JOB argument names: the id, or a unique prefix of it of at
    least `MIN_PREFIX` characters, as git and docker take them."""
    if len(given) < MIN_PREFIX:
        raise AmbiguousJob(f"job {given!r} is too short: give at least {MIN_PREFIX} "
                           "characters of its id (see `nightshift status`)")
    with db.reader(db_url) as session:
        found = session.scalars(select(Job.id).where(Job.id.startswith(given, autoescape=True))
                                .order_by(Job.id).limit(LISTED_MATCHES + 1)).all()
    if not found:
        raise JobNotFound(f"no job {given!r} in this database (see `nightshift status`)")
    if len(found) > 1 and found[0] != given:
        listed = ", ".join(found[:LISTED_MATCHES]) + (", ..." if len(found) > LISTED_MATCHES
                                                       else "")
        raise AmbiguousJob(f"job {given!r} is the start of several jobs' ids ({listed}): "
                           "give more characters")
    return found[0]


def status(db_url: str, job_id: str) -> dict[str, Any]:
    with db.reader(db_url) as session:
        job = _job(session, job_id)
        counts: dict[str, int] = {}
        tokens = [0, 0]
        for row in session.execute(select(JobCount).where(JobCount.job_id == job_id)).scalars():
            counts[row.status] = row.items
            tokens[0] += row.prompt_tokens
            tokens[1] += row.completion_tokens
        shown = _shape(job, counts, tokens)
        _note_unserved(session, [shown])
        return shown


def all_jobs(db_url: str, *, limit: int = 50) -> list[dict[str, Any]]:
    with db.reader(db_url) as session:
        jobs = session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)).all()
        counts: dict[str, dict[str, int]] = {job.id: {} for job in jobs}
        rows = session.execute(select(JobCount.job_id, JobCount.status, JobCount.items)
                               .where(JobCount.job_id.in_(list(counts)))).all()
        for job_id, item_status, n in rows:
            counts[job_id][item_status] = n
        shown = [_shape(job, counts[job.id], None) for job in jobs]
        _note_unserved(session, shown)
        return shown


def _shape(job: Job, counts: dict[str, int], tokens: Any) -> dict[str, Any]:
    shaped: dict[str, Any] = {"job_id": job.id, "state": job.state, "kind": job.kind,
                              "model": job.model, "total": job.total}
    shaped.update({name: counts.get(name, 0) for name in COUNTED})
    if tokens is not None:
        shaped["prompt_tokens"], shaped["completion_tokens"] = int(tokens[0]), int(tokens[1])
    for stamp in ("created_at", "started_at", "finished_at", "start_at", "deadline"):
        value = getattr(job, stamp)
        shaped[stamp] = value.isoformat() if value else None
    shaped["priority"] = job.priority
    shaped["reason"] = _reason(job)
    return shaped


def _reason(job: Job) -> str | None:
    """Why a job is where it is, when its counts alone do not say."""
    if job.state == JobState.SCHEDULED and job.start_at:
        return f"starts at {job.start_at.astimezone():%Y-%m-%d %H:%M %Z}"
    if (job.state == JobState.CANCELLED and job.deadline and job.finished_at
            and job.finished_at >= job.deadline):
        return (f"deadline {job.deadline.astimezone():%Y-%m-%d %H:%M %Z} passed: "
                "its pending items were cancelled")
    return None


def _note_unserved(s: Any, shown: list[dict[str, Any]]) -> None:
    """A job that no live worker can take waits: its reason says so, and for which model
    (a typo in a model name is otherwise a job that waits forever)."""
    waiting = [job for job in shown if job["state"] in (JobState.QUEUED, JobState.RUNNING)
               and not job["reason"]]
    if not waiting:
        return
    live = presence.live_models(s)
    for job in waiting:
        if job["model"] not in live:
            job["reason"] = (f"waiting: no worker for model {job['model']} seen in the last "
                             f"{presence.minutes()}")


def cancel(db_url: str, job_id: str) -> tuple[bool, dict[str, Any]]:
    """Stop a job: its pending items are cancelled; chunks already running finish. Returns
    whether it was stopped (False: it had ended already, and stays as it was)."""
    with db.session(db_url) as session, session.begin():
        # Locked: a chunk completing the job at this moment goes first, or after.
        stopped = stop(session, _job(session, job_id, lock=True), db.clock(session))
    return stopped, status(db_url, job_id)

