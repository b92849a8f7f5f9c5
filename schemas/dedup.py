"""Identical documents are answered once.

A document item carries a content key: the hash of its text together with everything
that decides its answer (model, prompts, sampling, checks, splitting). Within a job,
every item but the first of a key is marked `same_as` that first one and never runs;
when the first one's result is written, the others receive a copy in the same
transaction. Across jobs, `submit --reuse-results` copies the latest succeeded result of
an equal key from an earlier job at submit time, and the item does not run at all.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, literal, select, update
from sqlalchemy.orm import aliased

from schemas.tables import Item, ItemStatus, Result

# Fields of a spec that do not change an item's answer.
NOT_ANSWER = {"chunk_size"}


def fingerprint(spec: Any) -> str:
    """What of the job decides an answer, as one string to hash with each document."""
    decides = spec.model_dump(mode="json", exclude=NOT_ANSWER)
    return json.dumps(decides, sort_keys=True, separators=(",", ":"))


def content_key(fingerprint: str, payload: dict[str, Any]) -> str | None:
    sha = payload.get("sha256")
    if sha is None or "document" not in payload:
        return None
    return hashlib.blake2b(f"{fingerprint}\0{sha}".encode(), digest_size=32).hexdigest()


def mark_duplicates(conn: Connection, job_id: str) -> None:
    """Within the job, point every later item of a content key at the first one."""
    first = aliased(Item)
    earliest = (select(func.min(first.seq))
                .where(first.job_id == Item.job_id, first.content_key == Item.content_key)
                .scalar_subquery())
    conn.execute(update(Item).where(Item.job_id == job_id, Item.content_key.is_not(None))
                 .values(same_as=earliest))
    conn.execute(update(Item).where(Item.job_id == job_id, Item.same_as == Item.seq)
                 .values(same_as=None))


# A copy is a new row of its own time that cost no tokens; the rest is the original's.
FRESH = ("job_id", "item_seq", "created_at", "prompt_tokens", "completion_tokens")
COPIED = [c.name for c in Result.__table__.columns if c.name not in FRESH]


def share_results(conn: Connection, job_id: str, seqs: list[int]) -> None:
    """Copy the results just written for `seqs` to the items that are the same document."""
    if not seqs:
        return
    twins = select(Item.seq).where(Item.job_id == job_id, Item.same_as.in_(seqs))
    conn.execute(delete(Result).where(Result.job_id == job_id, Result.item_seq.in_(twins)))
    twin = aliased(Item)
    source = (select(twin.job_id, twin.seq, *[Result.__table__.c[c] for c in COPIED])
              .join(Result, and_(Result.job_id == twin.job_id, Result.item_seq == twin.same_as))
              .where(twin.job_id == job_id, twin.same_as.in_(seqs)))
    conn.execute(insert(Result).from_select(["job_id", "item_seq", *COPIED], source))
    status = (select(Result.status).where(Result.job_id == Item.job_id,
                                          Result.item_seq == Item.same_as).scalar_subquery())
    conn.execute(update(Item).where(Item.job_id == job_id, Item.same_as.in_(seqs))
                 .values(status=status))


def reuse_earlier(conn: Connection, job_id: str, *, batch: int = 500) -> int:
    """Give the job's document items the latest succeeded result of an equal content key
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
