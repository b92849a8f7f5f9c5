"""Identical requests are answered once.

An item whose answer may be shared carries a content key: the hash of everything that
decides its answer, the job's part (model, prompts, sampling, checks, adapter, splitting)
with the row's (a document's text, any other row's whole payload: its prompt or messages,
sampling overrides, reference). A document always may; any other row when its request
is greedy (a sampled row is an independent sample) or its job asks for sharing
(`--dedup`). Within a job, every item but the first of a key is marked `same_as` that
first one and never runs; when the first one's result is written, the others receive a
copy in the same transaction, with no tokens counted. Across jobs, `submit
--reuse-results` copies the latest succeeded result of an equal key from an earlier job
at submit time, and the item does not run at all.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, literal, select, update
from sqlalchemy.orm import aliased

from schemas.db import bulk
from schemas.spec import JobSpec
from schemas.tables import Item, ItemStatus, Result

# Fields of a spec that do not change an item's answer.
NOT_ANSWER = {"chunk_size", "dedup"}


def fingerprint(spec: Any) -> str:
    """What of the job decides an answer, as one string to hash with each document."""
    decides = spec.model_dump(mode="json", exclude=NOT_ANSWER)
    return json.dumps(decides, sort_keys=True, separators=(",", ":"))


def content_key(fingerprint: str, spec: JobSpec, payload: dict[str, Any], encoded: bytes
                ) -> str | None:
    """The row's key, or None when its answer is its own. `encoded` is the payload as
    stored."""
    sha = payload.get("sha256")
    if sha is not None and "document" in payload:
        row = str(sha).encode()
    elif spec.dedup or _greedy(spec, payload):
        row = encoded
    else:
        return None
    return hashlib.blake2b(fingerprint.encode() + b"\0" + row, digest_size=32).hexdigest()


def _greedy(spec: JobSpec, payload: dict[str, Any]) -> bool:
    temperature = (payload.get("sampling") or {}).get("temperature")
    return (spec.sampling.temperature if temperature is None else temperature) == 0


def mark_duplicates(conn: Connection, job_id: str) -> None:
    """Within the job, point every later item of a content key at the first one."""
    first = (select(Item.content_key, func.min(Item.seq).label("seq"))
             .where(Item.job_id == job_id, Item.content_key.is_not(None))
             .group_by(Item.content_key).having(func.count() > 1).subquery())
    conn.execute(update(Item).where(Item.job_id == job_id,
                                    Item.content_key == first.c.content_key,
                                    Item.seq > first.c.seq)
                 .values(same_as=first.c.seq))


# A copy is a new row of its own time that cost no tokens; the rest is the original's.
FRESH = ("job_id", "item_seq", "created_at", "prompt_tokens", "completion_tokens")
COPIED = [c.name for c in Result.__table__.columns if c.name not in FRESH]


def share_results(conn: Connection, job_id: str, seqs: list[int]) -> None:
    """Copy the results just written for `seqs` to the items that are the same request.
    Most writes have none: one indexed look-up (ix_items_twins) finds that out."""
    if not seqs:
        return
    twins = bulk.select_among(conn, Item.__table__, "seq", {"job_id": job_id}, "same_as", seqs)
    if not twins:
        return
    conn.execute(delete(Result).where(Result.job_id == job_id, Result.item_seq.in_(twins)))
    twin = aliased(Item)
    source = (select(twin.job_id, twin.seq, *[Result.__table__.c[c] for c in COPIED])
              .join(Result, and_(Result.job_id == twin.job_id, Result.item_seq == twin.same_as))
              .where(twin.job_id == job_id, twin.seq.in_(twins)))
    conn.execute(insert(Result).from_select(["job_id", "item_seq", *COPIED], source))
    status = (select(Result.status).where(Result.job_id == Item.job_id,
                                          Result.item_seq == Item.same_as).scalar_subquery())
    conn.execute(update(Item).where(Item.job_id == job_id, Item.seq.in_(twins))
                 .values(status=status))


def reuse_earlier(conn: Connection, job_id: str, *, batch: int = 500) -> int:
    """Give the job's keyed items the latest succeeded result of an equal content key
    from another job; they are done before any worker sees them. Returns how many."""
    mine = dict(conn.execute(select(Item.content_key, Item.seq).where(
        Item.job_id == job_id, Item.content_key.is_not(None), Item.same_as.is_(None))).all())
    keys = list(mine)
    reused: list[int] = []
    for i in range(0, len(keys), batch):
        found = conn.execute(
            select(Item.content_key, Result.job_id, Result.item_seq)
            .join(Result, and_(Result.job_id == Item.job_id, Result.item_seq == Item.seq))
            .where(Item.content_key.in_(keys[i:i + batch]), Item.job_id != job_id,
                   Result.status == ItemStatus.SUCCEEDED)
            .order_by(Result.created_at)).all()
        latest = {key: (src_job, src_seq) for key, src_job, src_seq in found}
        for key, (src_job, src_seq) in latest.items():
            seq = mine[key]
            source = (select(literal(job_id), literal(seq),
                             *[Result.__table__.c[c] for c in COPIED])
                      .where(Result.job_id == src_job, Result.item_seq == src_seq))
            conn.execute(insert(Result).from_select(["job_id", "item_seq", *COPIED], source))
            reused.append(seq)
    if reused:
        conn.execute(update(Item).where(Item.job_id == job_id, Item.seq.in_(reused))
                     .values(status=ItemStatus.SUCCEEDED))
        share_results(conn, job_id, reused)
    return len(reused)
