"""Results out of SQL: JSONL, CSV, Parquet and OpenAI Batch output lines, streamed."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO, Any

from sqlalchemy import select

from schemas import db
from schemas.errors import ConfigError, JobNotFound
from schemas.tables import Item, Job, Result

FORMATS = ("jsonl", "csv", "parquet", "openai")
CSV_FIELDS = ["id", "status", "output", "label", "error", "finish_reason", "attempts",
              "prompt_tokens", "completion_tokens"]


def rows(db_url: str, job_id: str) -> Iterator[tuple[Job, Item, Result | None]]:
    with db.session(db_url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} in this database")
        query = (select(Item, Result)
                 .outerjoin(Result, (Result.job_id == Item.job_id) & (Result.item_seq == Item.seq))
                 .where(Item.job_id == job_id).order_by(Item.seq)
                 .execution_options(yield_per=1000))
        for item, result in s.execute(query):
            yield job, item, result


def record(job: Job, item: Item, result: Result | None) -> dict[str, Any]:
    """One item as scripts read it: the DESIGN contract's keys, and more."""
    out: dict[str, Any] = {
        "id": item.key,
        "status": item.status,
        "output": result.output if result else None,
        "error": result.error if result else None,
        "attempts": result.attempts if result else 0,
        "prompt_tokens": result.prompt_tokens if result else 0,
        "completion_tokens": result.completion_tokens if result else 0,
        "finish_reason": result.finish_reason if result else None,
    }
    if job.kind == "classify":
        out["label"] = result.label if result else None
        out["probabilities"] = result.probabilities if result else None
        out["output"] = out["label"]
    if result is not None and result.samples:
        out["samples"] = result.samples
    if "document" in item.payload:
        out["document"] = item.payload["document"]
    return out


def openai_line(job: Job, item: Item, result: Result | None) -> dict[str, Any]:
    """An OpenAI Batch API output line: a 200 with a completion body, or a 400 with an error."""
    request_id = f"{job.id}-{item.seq}"
    line: dict[str, Any] = {"id": f"batch_req_{request_id}", "custom_id": item.key,
                            "response": None, "error": None}
    if result is None:
        line["error"] = {"code": "not_finished", "message": f"item is {item.status}"}
        return line
    if result.status != "succeeded":
        line["response"] = {"status_code": 400, "request_id": request_id, "body": {"error": {
            "message": result.error, "type": "invalid_request_error", "param": None,
            "code": None}}}
        return line
    usage = {"prompt_tokens": result.prompt_tokens,
             "completion_tokens": result.completion_tokens,
             "total_tokens": result.prompt_tokens + result.completion_tokens}
    texts = result.samples or [result.output or ""]
    created = int(result.created_at.timestamp())
    if item.payload.get("url") == "/v1/completions":
        choices: list[dict[str, Any]] = [
            {"index": i, "text": t, "logprobs": None, "finish_reason": result.finish_reason}
            for i, t in enumerate(texts)]
        body = {"id": f"cmpl-{request_id}", "object": "text_completion", "created": created,
                "model": job.model, "choices": choices, "usage": usage}
    else:
        choices = [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None},
                    "logprobs": None, "finish_reason": result.finish_reason}
                   for i, t in enumerate(texts)]
        body = {"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": created,
                "model": job.model, "choices": choices, "usage": usage,
                "system_fingerprint": None}
    line["response"] = {"status_code": 200, "request_id": request_id, "body": body}
    return line


def write(db_url: str, job_id: str, fmt: str, out: IO[str] | str) -> int:
    """Write every item of the job; returns how many lines (rows) were written."""
    if fmt == "parquet":
        return _parquet(db_url, job_id, out)
    assert not isinstance(out, str)
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
    for job, item, result in rows(db_url, job_id):
        if fmt == "openai":
            out.write(json.dumps(openai_line(job, item, result), ensure_ascii=False) + "\n")
        elif fmt == "csv":
            writer.writerow(record(job, item, result))
        else:
            out.write(json.dumps(record(job, item, result), ensure_ascii=False) + "\n")
        count += 1
    return count


def _parquet(db_url: str, job_id: str, out: IO[str] | str) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        hint = "pip install 'nightshift[parquet]'"
        raise ConfigError(f"parquet export needs pyarrow: {hint}") from None
    if not isinstance(out, str):
        raise ConfigError("parquet export needs a file: pass -o FILE")
    records = [record(*r) for r in rows(db_url, job_id)]
    for r in records:
        if "probabilities" in r:
            r["probabilities"] = json.dumps(r["probabilities"])
    pq.write_table(pa.Table.from_pylist(records), out)
    return len(records)
