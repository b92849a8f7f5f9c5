"""Results out of SQL: JSONL, CSV, Parquet and OpenAI Batch output lines, streamed.

`--format openai` writes what OpenAI's Batch API gives back, so code written for OpenAI
batches reads it unchanged: the output file holds one line per request that produced a
completion, and the error file (OpenAI's `error_file_id`) one line per request that did
not, in OpenAI's error-line shape.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas import db
from schemas.errors import ConfigError, JobNotFound
from schemas.states import ReviewVerdict
from schemas.tables import Item, ItemStatus, Job, Piece, Quality, Result, Review

CSV_FIELDS = ["id", "status", "output", "label", "error", "finish_reason", "quality",
              "attempts", "attempt", "prompt_tokens", "completion_tokens", "checks", "metrics",
              "review", "reviewed_output", "reviewed_label"]
# Structured values that CSV and Parquet carry as JSON text (their shapes vary by job).
JSON_TEXT_FIELDS = ("probabilities", "checks", "metrics")
PARQUET_ROW_GROUP = 10_000
# Items read at a time (rows).
PAGE = 1_000


@dataclass
class Written:
    """How many lines went to the output, and how many to the error file (OpenAI only)."""

    rows: int = 0
    errors: int = 0


def rows(db_url: str, job_id: str
         ) -> Iterator[tuple[Job, Item, Result | None, Review | None]]:
    """Every item of the job in order, with its result and a person's review, if any.

    Read a page of items at a time, each page's results and reviews by their key range,
    all in one snapshot: a join of the whole job, read through a cursor, was planned as a
    nested loop over every result for each item where PostgreSQL's statistics still saw
    the tables small (a job written since the last ANALYZE), 7 s a thousand rows."""
    with db.reader(db_url) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} in this database")
        after = -1
        while items := session.scalars(select(Item).where(Item.job_id == job_id,
                                                          Item.seq > after)
                                       .order_by(Item.seq).limit(PAGE)).all():
            after = items[-1].seq
            results = _by_item(session, Result, job_id, items[0].seq, after)
            reviews = _by_item(session, Review, job_id, items[0].seq, after)
            for item in items:
                yield job, item, results.get(item.seq), reviews.get(item.seq)


def _by_item(session: Session, table: Any, job_id: str, first: int,
             last: int) -> dict[int, Any]:
    return {row.item_seq: row for row in session.scalars(
        select(table).where(table.job_id == job_id, table.item_seq.between(first, last)))}


def record(job: Job, item: Item, result: Result | None, *, review: Review | None = None
           ) -> dict[str, Any]:
    """One item as scripts read it: the DESIGN contract's keys, its quality record, and a
    person's review (a correction is the item's answer)."""
    out: dict[str, Any] = {
        "id": item.key,
        "status": item.status,
        "output": result.output if result else None,
        "error": result.error if result else None,
        "attempts": result.attempts if result else 0,
        "prompt_tokens": result.prompt_tokens if result else 0,
        "completion_tokens": result.completion_tokens if result else 0,
        "finish_reason": result.finish_reason if result else None,
        "quality": result.quality if result else None,
        "attempt": result.attempt if result else None,
        "checks": result.checks if result else None,
        "metrics": result.metrics if result else None,
    }
    if job.kind == "classify":
        out["label"] = result.label if result else None
        out["probabilities"] = result.probabilities if result else None
        out["output"] = out["label"]
    if result is not None and result.samples:
        out["samples"] = result.samples
    if "document" in item.payload:
        out["document"] = item.payload["document"]
    out["review"] = review.verdict if review else None
    corrected = _corrected(review)
    reviewed = "reviewed_label" if job.kind == "classify" else "reviewed_output"
    out[reviewed] = corrected
    if corrected is not None:  # a person's answer: the item has one now
        out["status"] = ItemStatus.SUCCEEDED
        out["output"] = corrected
        if job.kind == "classify":
            out["label"] = corrected
    return out


def _corrected(review: Review | None) -> str | None:
    return review.correction if review and review.verdict == ReviewVerdict.CORRECTED else None


def openai_line(job: Job, item: Item, result: Result | None, *, review: Review | None = None
                ) -> dict[str, Any]:
    """The item as a line of OpenAI's output file or, if it produced no answer, of the
    error file; `is_error(line)` tells which. A person's correction is its answer."""
    request_id = f"{job.id}-{item.seq}"
    line: dict[str, Any] = {"id": f"batch_req_{request_id}", "custom_id": item.key,
                            "response": None, "error": None}
    if result is None or item.status == ItemStatus.CANCELLED:
        line["error"] = _not_run(job, item)
    elif result.status != ItemStatus.SUCCEEDED and _corrected(review) is None:
        status_code, error = _failure(item, result)
        line["response"] = {"status_code": status_code, "request_id": request_id,
                            "body": {"error": error}}
    else:
        line["response"] = {"status_code": 200, "request_id": request_id,
                            "body": _completion(job, item, result, request_id,
                                                _corrected(review))}
    return line


def is_error(line: dict[str, Any]) -> bool:
    return line["response"] is None or line["response"]["status_code"] != 200


def _completion(job: Job, item: Item, result: Result, request_id: str,
                corrected: str | None) -> dict[str, Any]:
    """A `chat.completion` or `text_completion` object, as the URL of the request asks."""
    answer = result.label if job.kind == "classify" else result.output
    texts = [corrected] if corrected is not None else result.samples or [answer or ""]
    usage = {"prompt_tokens": result.prompt_tokens,
             "completion_tokens": result.completion_tokens,
             "total_tokens": result.prompt_tokens + result.completion_tokens}
    created = int(result.created_at.timestamp())
    if item.payload.get("url") == "/v1/completions":
        choices: list[dict[str, Any]] = [
            {"text": t, "index": i, "logprobs": None, "finish_reason": result.finish_reason}
            for i, t in enumerate(texts)]
        return {"id": f"cmpl-{request_id}", "object": "text_completion", "created": created,
                "model": job.model, "choices": choices, "usage": usage,
                "system_fingerprint": None}
    choices = [{"index": i,
                "message": {"role": "assistant", "content": t, "refusal": None,
                            "annotations": []},
                "logprobs": None, "finish_reason": result.finish_reason}
               for i, t in enumerate(texts)]
    return {"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": created,
            "model": job.model, "choices": choices, "usage": usage,
            "service_tier": "default", "system_fingerprint": None}


def _failure(item: Item, result: Result) -> tuple[int, dict[str, Any]]:
    """An item that ran and failed, as the HTTP error OpenAI would have answered."""
    message = result.error or "failed"
    param = "prompt" if "prompt" in item.payload and item.payload.get("raw") else "messages"
    if message.startswith("prompt is ") and "context" in message:
        return 400, _error(message, "invalid_request_error", param, "context_length_exceeded")
    if result.quality == Quality.FAILED:
        return 422, _error(message, "quality_error", None, "quality_check_failed")
    if message.startswith(("payload is missing", "template", "engine refused")):
        return 400, _error(message, "invalid_request_error", param, None)
    return 500, _error(message, "server_error", None, None)


def _error(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"message": message, "type": kind, "param": param, "code": code}


def _not_run(job: Job, item: Item) -> dict[str, str]:
    """OpenAI's `error` for a request that never ran: the batch expired or was cancelled."""
    if item.status == ItemStatus.CANCELLED:
        ended = job.finished_at or datetime.now(UTC)
        if job.deadline is not None and job.deadline <= ended:
            return {"code": "batch_expired", "message": "This request could not be executed "
                    f"before the job's deadline ({job.deadline.isoformat()})."}
        return {"code": "batch_cancelled",
                "message": "This request was not executed: the job was cancelled."}
    return {"code": "not_finished",
            "message": f"This request is {item.status}: the job has not finished yet."}


def write(db_url: str, job_id: str, fmt: str, out: IO[str] | str, *,
          errors: IO[str] | None = None, per_piece: bool = False) -> Written:
    """Write every item of the job. For `openai`, requests without an answer go to
    `errors` (left out, but counted, when it is None)."""
    if fmt == "parquet":
        return _parquet(db_url, job_id, out)
    assert not isinstance(out, str)
    written = Written()
    if fmt == "csv":
        fields = [*CSV_FIELDS, "piece", "start_char", "end_char"] if per_piece else CSV_FIELDS
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
    if per_piece:
        for line in piece_records(db_url, job_id):
            if fmt == "csv":
                writer.writerow(_as_text(line))
            else:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            written.rows += 1
        return written
    for job, item, result, review in rows(db_url, job_id):
        if fmt == "openai":
            line = openai_line(job, item, result, review=review)
            if is_error(line):
                written.errors += 1
                if errors is not None:
                    errors.write(json.dumps(line, ensure_ascii=False) + "\n")
                continue
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
        elif fmt == "csv":
            writer.writerow(_as_text(record(job, item, result, review=review)))
        else:
            out.write(json.dumps(record(job, item, result, review=review), ensure_ascii=False)
                      + "\n")
        written.rows += 1
    return written


def piece_records(db_url: str, job_id: str) -> Iterator[dict[str, Any]]:
    """One line per piece of every document (`--per-piece`): a document that fitted the
    context is its own piece 1; a split one has a line per map piece, in order."""
    with db.reader(db_url) as session:
        pieces: dict[int, list[Piece]] = {}
        maps = (select(Piece).where(Piece.job_id == job_id, Piece.kind == "map")
                .order_by(Piece.item_seq, Piece.piece))
        for piece in session.scalars(maps):
            pieces.setdefault(piece.item_seq, []).append(piece)
        session.expunge_all()
    for job, item, result, review in rows(db_url, job_id):
        whole = record(job, item, result, review=review)
        split = pieces.get(item.seq)
        if not split:
            yield {**whole, "document": whole.get("document", item.key), "piece": 1,
                   "start_char": 0, "end_char": None}
            continue
        for p in split:
            yield {"id": f"{item.key}#{p.piece}", "document": whole.get("document", item.key),
                   "piece": p.piece, "start_char": p.start_char, "end_char": p.end_char,
                   "status": p.status, "output": p.output, "error": p.error,
                   "attempts": p.attempts, "prompt_tokens": p.prompt_tokens,
                   "completion_tokens": p.completion_tokens,
                   "finish_reason": p.finish_reason, "quality": p.quality, "checks": p.checks,
                   **({"label": p.label, "probabilities": p.probabilities}
                      if job.kind == "classify" else {})}


def errors_path_for(output: Path) -> Path:
    """The error file beside `-o FILE`: batch_output.jsonl -> batch_output.errors.jsonl."""
    return output.with_name(output.name.removesuffix(".jsonl") + ".errors.jsonl")


def to_files(db_url: str, job_id: str, fmt: str, output: Path | None, *,
             errors: Path | None = None, per_piece: bool = False) -> dict[str, Any]:
    """What `nightshift results` does: the output (stdout when None) and, for `openai`, the
    error file (written, empty or not, whenever there is a path for it); returns a summary."""
    if fmt == "parquet" and output is None:
        raise ConfigError("--format parquet needs -o FILE")
    if per_piece and fmt not in ("jsonl", "csv"):
        raise ConfigError("--per-piece goes with --format jsonl or csv")
    if errors is not None and fmt != "openai":
        raise ConfigError("--errors goes with --format openai (other formats keep every row)")
    if fmt == "openai" and errors is None and output is not None:
        errors = errors_path_for(output)
    with db.reader(db_url) as session:
        if session.get(Job, job_id) is None:
            raise JobNotFound(f"no job {job_id!r} in this database")
    with ExitStack() as files:
        out: IO[str] | str = sys.stdout
        if output is not None:
            out = str(output) if fmt == "parquet" else files.enter_context(
                output.open("w", encoding="utf-8", newline=""))
        err = files.enter_context(errors.open("w", encoding="utf-8")) if errors else None
        written = write(db_url, job_id, fmt, out, errors=err, per_piece=per_piece)
    return {"job_id": job_id, "format": fmt, "rows": written.rows,
            "output": str(output) if output else None, "errors": written.errors,
            "errors_output": str(errors) if errors else None}


def _as_text(r: dict[str, Any]) -> dict[str, Any]:
    for key in JSON_TEXT_FIELDS:
        if key in r and r[key] is not None:
            r[key] = json.dumps(r[key], ensure_ascii=False)
    return r


def _parquet(db_url: str, job_id: str, out: IO[str] | str) -> Written:
    """Written in row groups as rows stream in: memory stays flat for millions of items."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        hint = "pip install 'nightshift[parquet]'"
        raise ConfigError(f"parquet export needs pyarrow: {hint}") from None
    if not isinstance(out, str):
        raise ConfigError("parquet export needs a file: pass -o FILE")
    text, number = pa.string(), pa.int64()
    schema = pa.schema([
        ("id", text), ("status", text), ("output", text), ("label", text), ("error", text),
        ("finish_reason", text), ("quality", text), ("attempts", number), ("attempt", number),
        ("prompt_tokens", number), ("completion_tokens", number), ("checks", text),
        ("metrics", text), ("probabilities", text), ("samples", pa.list_(text)),
        ("document", text), ("review", text), ("reviewed_output", text),
        ("reviewed_label", text)])
    written = Written()
    with pq.ParquetWriter(out, schema) as writer:
        batch: list[dict[str, Any]] = []
        for job, item, result, review in rows(db_url, job_id):
            batch.append(_as_text(record(job, item, result, review=review)))
            if len(batch) == PARQUET_ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                written.rows, batch = written.rows + len(batch), []
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        written.rows += len(batch)
    return written
