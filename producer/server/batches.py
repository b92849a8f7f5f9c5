"""Batches: an uploaded file becomes a nightshift job exactly as `nightshift submit` makes
one; a Batch object is read off the job's state and counts. nightshift's own options ride
in the batch's `metadata` under `nightshift.*` keys, so the SDK needs nothing new."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from producer import export, status
from producer.readers import RowError
from producer.schedule import Schedule
from producer.server import storage
from producer.server.errors import ApiError, not_found
from producer.server.keys import Caller
from schemas import db
from schemas.errors import InputError, NightshiftError
from schemas.settings import Settings
from schemas.states import ItemStatus, JobState
from schemas.tables import Batch, Review, StoredFile, utcnow

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
WINDOWS = {"24h": timedelta(hours=24)}
# nightshift's options in `metadata`: each a string, as OpenAI's metadata values are.
OPTIONS = ("nightshift.model", "nightshift.checks", "nightshift.max_attempts",
           "nightshift.priority", "nightshift.ladder")
# Refused lines listed in a failed batch's `errors`, at most.
LISTED_ERRORS = 100
OUTPUT, ERRORS = "out", "err"
# How export.openai_line renders a batch's files: a new value whenever their bytes change.
FILE_FORMAT = b"openai-batch-lines 1"


def create(settings: Settings, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    """The batch's job, submitted from its input file; a file with bad lines makes a
    `failed` batch whose `errors` name them, as OpenAI reports it."""
    endpoint = _field(body, "endpoint")
    if endpoint not in ENDPOINTS:
        raise ApiError(400, f"endpoint {endpoint!r} is not supported: use one of "
                            f"{', '.join(ENDPOINTS)}", param="endpoint")
    window = _field(body, "completion_window")
    if window not in WINDOWS:
        raise ApiError(400, f"completion_window {window!r} is not supported: use '24h'",
                       param="completion_window")
    labels = _metadata(body.get("metadata"))
    file_id = _field(body, "input_file_id")
    with db.reader(settings.database_url) as session:
        stored = session.get(StoredFile, file_id)
    if stored is None or not caller.owns(stored.owner):
        raise not_found("file", file_id, "input_file_id")
    if stored.purpose != "batch":
        raise ApiError(400, f"file {file_id!r} has purpose {stored.purpose!r}; a batch's input "
                            "file is uploaded with purpose 'batch'", param="input_file_id")
    now = utcnow()
    spec, schedule = _job(settings, labels, now + WINDOWS[window])
    path = storage.path_of(settings, stored.name)
    refused: list[RowError] = list(_other_endpoints(path, endpoint))
    batch = Batch(owner=caller.key_id, created_at=now, input_file_id=file_id,
                  endpoint=endpoint, completion_window=window, labels=labels or None)

    def with_job(session: Session, job_id: str) -> None:
        # In the job's own transaction: no job runs that its batch does not show.
        batch.id, batch.job_id = f"batch_{job_id}", job_id
        session.add(batch)

    if not refused:
        from producer.submit import submit

        try:
            submit(settings, spec, path, fmt="openai", schedule=schedule,
                   on_invalid=refused.append, with_job=with_job)
        except InputError as exc:  # said of the stored file: named by its id instead
            refused = refused or [RowError(0, str(exc).replace(str(path), file_id))]
    if refused:
        batch.id, batch.errors, batch.failed_at = f"batch_{_hex()}", _errors(refused), now
        with db.session(settings.database_url) as session, session.begin():
            session.add(batch)
    return shape(settings, batch)


def get(settings: Settings, caller: Caller, batch_id: str) -> Batch:
    with db.reader(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
    if batch is None or not caller.owns(batch.owner):
        raise not_found("batch", batch_id)
    return batch


def listed(settings: Settings, caller: Caller, *, after: str | None, limit: int
           ) -> dict[str, Any]:
    """Newest first, `limit` after the batch `after`, as the SDK's auto-paging asks."""
    query = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc())
    if not caller.admin:
        query = query.where(Batch.owner == caller.key_id)
    if after:
        mark = get(settings, caller, after)
        query = query.where((Batch.created_at < mark.created_at)
                            | ((Batch.created_at == mark.created_at) & (Batch.id < mark.id)))
    with db.reader(settings.database_url) as session:
        rows = session.scalars(query.limit(limit + 1)).all()
    shown = [shape(settings, b) for b in rows[:limit]]
    return {"object": "list", "data": shown,
            "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None, "has_more": len(rows) > limit}


def cancel(settings: Settings, caller: Caller, batch_id: str) -> dict[str, Any]:
    batch = get(settings, caller, batch_id)
    if batch.job_id is not None and status.cancel(settings.database_url, batch.job_id)[0]:
        with db.session(settings.database_url) as session, session.begin():
            session.execute(update(Batch).where(Batch.id == batch.id,
                                                Batch.cancelling_at.is_(None))
                            .values(cancelling_at=utcnow()))
        batch = get(settings, caller, batch_id)
    return shape(settings, batch)


def shape(settings: Settings, batch: Batch) -> dict[str, Any]:
    """OpenAI's Batch object, read off the batch's job."""
    job = status.status(settings.database_url, batch.job_id) if batch.job_id else None
    state = _state(batch, job)
    stamps: dict[str, int | None] = {name: None for name in (
        "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
        "cancelling_at", "cancelled_at")}
    created = _seconds(batch.created_at)
    stamps["failed_at"] = _seconds(batch.failed_at)
    stamps["cancelling_at"] = _seconds(batch.cancelling_at)
    done = failed = 0
    output_id = error_id = None
    if job is not None:
        stamps["in_progress_at"] = _seconds(job["started_at"]) or created
        ended = {"completed": "completed_at", "expired": "expired_at",
                 "cancelled": "cancelled_at"}.get(state)
        if ended:
            stamps[ended] = _seconds(job["finished_at"])
        done = job[ItemStatus.SUCCEEDED]
        failed = job[ItemStatus.FAILED] + job[ItemStatus.CANCELLED]
        if state in ("completed", "expired", "cancelled"):
            output_id = f"file-{OUTPUT}-{batch.job_id}" if done else None
            error_id = f"file-{ERRORS}-{batch.job_id}" if failed else None
    deadline = job["deadline"] if job else None
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window,
        "status": state, "output_file_id": output_id, "error_file_id": error_id,
        "created_at": created, "expires_at": _seconds(deadline), **stamps,
        "request_counts": {"total": job["total"] if job else 0, "completed": done,
                           "failed": failed},
        "metadata": batch.labels,
    }


def output_file(settings: Settings, caller: Caller, file_id: str
                ) -> tuple[Batch, str] | None:
    """The batch whose output (`OUTPUT`) or error (`ERRORS`) file `file_id` names, once
    the batch has ended; None when it names no such file."""
    parts = file_id.split("-")
    if len(parts) != 3 or parts[0] != "file" or parts[1] not in (OUTPUT, ERRORS):
        return None
    with db.reader(settings.database_url) as session:
        batch = session.scalar(select(Batch).where(Batch.job_id == parts[2]))
    if batch is None or not caller.owns(batch.owner):
        raise not_found("file", file_id)
    shown = shape(settings, batch)
    if file_id not in (shown["output_file_id"], shown["error_file_id"]):
        raise not_found("file", file_id)
    return batch, parts[1]


def lines(settings: Settings, batch: Batch, which: str) -> Iterator[bytes]:
    """The output or error file's lines, from the results, streamed."""
    assert batch.job_id is not None
    encode = msgspec.json.Encoder().encode
    for job, item, result, review in export.rows(settings.database_url, batch.job_id):
        line = export.openai_line(job, item, result, review=review)
        if export.is_error(line) == (which == ERRORS):
            yield encode(line) + b"\n"


def blocks(settings: Settings, batch: Batch, which: str) -> Iterator[bytes]:
    """The file's lines joined into blocks of about `storage.COPY_BYTES`, as the response
    sends them: a line a message took 26 s to send 100,000 lines (80 MB)."""
    block: list[bytes] = []
    size = 0
    for line in lines(settings, batch, which):
        block.append(line)
        size += len(line)
        if size >= storage.COPY_BYTES:
            yield b"".join(block)
            block, size = [], 0
    if block:
        yield b"".join(block)


def file_size(settings: Settings, batch: Batch, which: str) -> int:
    """The file's bytes: counted by rendering every line (a minute for a million), so kept
    with the batch until a review changes what its files say. Nothing else does once the
    batch has ended: its items run no more, and `nightshift retry` refuses it."""
    assert batch.job_id is not None
    with db.reader(settings.database_url) as session:
        reviewed = _reviews_digest(session, batch.job_id)
    kept = batch.file_sizes or {}
    if kept.get("reviewed") != reviewed:
        kept = {"reviewed": reviewed}
    if which not in kept:
        # Reviews given while this counts are in the count and not in the digest kept with
        # it: the next call counts again, never the other way round.
        kept = {**kept, which: sum(map(len, lines(settings, batch, which)))}
        with db.session(settings.database_url) as session, session.begin():
            session.execute(update(Batch).where(Batch.id == batch.id).values(file_sizes=kept))
    return int(kept[which])


def _reviews_digest(session: Session, job_id: str) -> str:
    """The job's reviews, and how this version renders a file's lines (a kept size is
    counted again after an upgrade that changes them: bump FILE_FORMAT)."""
    digest = hashlib.sha256(FILE_FORMAT)
    for review in session.execute(select(Review.item_seq, Review.verdict, Review.correction)
                                  .where(Review.job_id == job_id).order_by(Review.item_seq)):
        digest.update(msgspec.json.encode(tuple(review)))
    return digest.hexdigest()


def _state(batch: Batch, job: dict[str, Any] | None) -> str:
    if job is None:
        return "failed"
    state, running = job["state"], job[ItemStatus.RUNNING]
    if state == JobState.COMPLETED:
        return "completed"
    if state == JobState.FAILED:
        return "failed"
    if state == JobState.CANCELLED:
        expired = batch.cancelling_at is None and job["reason"] is not None
        if running:
            return "finalizing" if expired else "cancelling"
        return "expired" if expired else "cancelled"
    return "cancelling" if batch.cancelling_at else "in_progress"


def _job(settings: Settings, labels: dict[str, str], deadline: datetime) -> tuple[Any, Schedule]:
    from producer.cli import build_spec
    from schemas.spec import JobSpec

    given = {key.removeprefix("nightshift."): value for key, value in labels.items()
             if key.startswith("nightshift.")}
    try:
        checks = json.loads(given["checks"]) if "checks" in given else None
        if isinstance(checks, str):
            checks = [checks]
        _refuse_paths(given.get("model"), checks)
        priority = int(given.get("priority", 0))
        spec: JobSpec = build_spec(
            None, {}, model=given.get("model") or settings.model, checks=checks,
            max_attempts=int(given["max_attempts"]) if "max_attempts" in given else None,
            ladder=given["ladder"].split(",") if "ladder" in given else None)
        if not 0 <= priority <= 9:
            raise ValueError("nightshift.priority must be between 0 and 9")
    except (ValueError, NightshiftError) as exc:
        raise ApiError(400, f"metadata: {exc}", param="metadata") from None
    return spec, Schedule(deadline=deadline, priority=priority)


def _refuse_paths(model: str | None, checks: Any) -> None:
    """A batch names data, never a place on the server: no model directory, no check
    parameter that reads a file (blocklist's `file`). Nothing is looked up to say so."""
    if model and (model.startswith(("/", ".", "~")) or ".." in model or "\\" in model):
        raise ValueError("nightshift.model must be a model's name, not a path")
    for check in checks or []:
        params = (check.get("params") or {}) if isinstance(check, dict) else dict(
            part.split("=", 1) for part in str(check).partition(":")[2].split(",")
            if "=" in part)
        if "file" in params:
            raise ValueError("a check's `file` parameter reads the server's files: give "
                             "its words instead (blocklist:words=a|b)")


def _metadata(given: Any) -> dict[str, str]:
    if given is None:
        return {}
    if not isinstance(given, dict) or len(given) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in given.items()):
        raise ApiError(400, "metadata must be an object of at most 16 string values (keys "
                            "up to 64 characters, values up to 512)", param="metadata")
    unknown = sorted(k for k in given if k.startswith("nightshift.") and k not in OPTIONS)
    if unknown:
        raise ApiError(400, f"metadata: unknown option {unknown[0]!r}; nightshift reads "
                            f"{', '.join(OPTIONS)}", param="metadata")
    return dict(given)


def _field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Missing required parameter: {name!r}", param=name,
                       code="missing_required_parameter")
    return value


def _other_endpoints(path: Any, endpoint: str) -> Iterator[RowError]:
    """Lines whose `url` is not the batch's endpoint (OpenAI refuses a mixed file)."""
    decode = msgspec.json.decode
    with path.open("rb") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            url = decode(text).get("url")
            if url != endpoint:
                yield RowError(number, f"url {url!r} is not the batch's endpoint {endpoint!r}")


def _errors(refused: list[RowError]) -> list[dict[str, Any]]:
    return [{"code": "invalid_request", "message": e.reason, "param": None,
             "line": e.line or None} for e in refused[:LISTED_ERRORS]]


def _seconds(when: datetime | str | None) -> int | None:
    if when is None:
        return None
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    return int(when.timestamp())


def _hex() -> str:
    import uuid

    return uuid.uuid4().hex
