"""The review queue: labels kept for review first, then failed answers, then a spot check of
passed ones; a verdict covers the item and its copies, a correction is the answer every
export gives, and the report counts how often people agreed with the checks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import Stack, lease
from sqlalchemy import select, update

from producer import export, reviews
from producer.submit import submit
from quality import report
from schemas import db
from schemas.errors import InputError
from schemas.settings import load
from schemas.spec import JobSpec
from schemas.tables import Item, Review
from worker.attempts import Outcome
from worker.chunks import write

LABELS = ["positive", "negative"]


def _classified(stack: Stack, tmp_path: Path, n: int = 40) -> str:
    """A job of `n` labels: item 3 and 7 kept for review, 5 failed, the rest passed; item 9
    takes item 7's answer."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"text {i}"}) + "\n"
                            for i in range(n)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    spec = JobSpec(kind="classify", labels=LABELS, chunk_size=n, checks=["confidence"])  # type: ignore[list-item]
    job = submit(settings, spec, path).job_id
    with db.session(stack.db_url) as session, session.begin():
        session.execute(update(Item).where(Item.job_id == job, Item.seq == 9).values(same_as=7))
    outcomes = []
    for i in range(n):
        if i == 9:
            continue
        quality = {3: "needs_review", 7: "needs_review", 5: "failed"}.get(i, "passed")
        outcomes.append(Outcome(i, "failed" if i == 5 else "succeeded", label="positive",
                                output="positive", quality=quality))
    write(stack.db_url, lease(stack.db_url, job, 0), outcomes)
    return job


def _queue(stack: Stack, job: str) -> list[tuple[str, int]]:
    seen, queue, after = [], "needs_review", -1
    while (found := reviews.next_in_queue(stack.db_url, job, queue=queue, after=after)):
        seen.append(found)
        queue, after = found
    return seen


def test_the_queue_holds_review_labels_then_failures_then_a_spot_check(
        stack: Stack, tmp_path: Path) -> None:
    job = _classified(stack, tmp_path)
    queue = _queue(stack, job)
    assert queue[:4] == [("needs_review", 3), ("needs_review", 7), ("needs_review", 9),
                         ("failed", 5)]
    sample = [seq for name, seq in queue if name == "sample"]
    assert sample and set(sample) <= set(range(40)) - {3, 5, 7, 9}
    assert len(sample) < 40 * 0.25  # a spot check, not every passed answer

    reviews.record(stack.db_url, job, 3, "accepted", reviewer="ana")
    assert reviews.next_in_queue(stack.db_url, job) == ("needs_review", 7)


def test_a_verdict_covers_the_copies_and_a_correction_is_every_exports_answer(
        stack: Stack, tmp_path: Path) -> None:
    job = _classified(stack, tmp_path)
    assert reviews.record(stack.db_url, job, 7, "corrected", correction="negative",
                          note="sarcasm", reviewer="ana") == 2  # item 9 copies item 7
    reviews.record(stack.db_url, job, 3, "accepted", reviewer="ana")
    reviews.record(stack.db_url, job, 5, "rejected", reviewer="bo")

    lines = io.StringIO()
    export.write(stack.db_url, job, "jsonl", lines)
    by_id = {r["id"]: r for r in map(json.loads, lines.getvalue().splitlines())}
    assert (by_id["r7"]["label"], by_id["r7"]["review"], by_id["r7"]["reviewed_label"]) == (
        "negative", "corrected", "negative")
    assert by_id["r9"]["label"] == "negative"
    assert (by_id["r3"]["label"], by_id["r3"]["review"], by_id["r3"]["reviewed_label"]) == (
        "positive", "accepted", None)
    assert by_id["r0"]["review"] is None

    output = io.StringIO()
    export.write(stack.db_url, job, "openai", output)
    line = next(json.loads(x) for x in output.getvalue().splitlines()
                if json.loads(x)["custom_id"] == "r7")
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "negative"

    shown = report.build(stack.db_url, job)
    # Judged: item 5 (failed, rejected: agreed); items 3, 7, 9 were kept for review.
    assert (shown["reviewed"], shown["human_agreement"]) == (4, 1.0)
    assert shown["human_accuracy"] == 0.25  # 3 accepted; 5 rejected; 7, 9 relabelled


def test_a_later_verdict_replaces_the_earlier_one(stack: Stack, tmp_path: Path) -> None:
    job = _classified(stack, tmp_path)
    reviews.record(stack.db_url, job, 0, "rejected", reviewer="ana")
    reviews.record(stack.db_url, job, 0, "accepted", reviewer="bo")
    with db.session(stack.db_url) as session:
        rows = session.execute(select(Review.verdict, Review.reviewer).where(
            Review.job_id == job, Review.item_seq == 0)).all()
    assert rows == [("accepted", "bo")]
    assert report.build(stack.db_url, job)["human_agreement"] == 1.0


@pytest.mark.parametrize(("verdict", "correction", "message"), [
    ("maybe", None, "verdict 'maybe': one of accepted, rejected, corrected"),
    ("corrected", "", "a correction comes with the verdict corrected"),
    ("accepted", "negative", "a correction comes with the verdict corrected"),
    ("corrected", "neutral", "correction 'neutral': not one of the job's labels"),
])
def test_a_bad_verdict_is_refused_naming_it_and_nothing_is_kept(
        stack: Stack, tmp_path: Path, verdict: str, correction: str | None,
        message: str) -> None:
    job = _classified(stack, tmp_path)
    with pytest.raises(InputError, match=message):
        reviews.record(stack.db_url, job, 3, verdict, correction=correction, reviewer="ana")
    with pytest.raises(InputError, match="item 99 of job .* has no answer"):
        reviews.record(stack.db_url, job, 99, "accepted", reviewer="ana")
    assert reviews.of_item(stack.db_url, job, 3) is None


def test_a_corrected_failed_answer_exports_as_a_success(stack: Stack, tmp_path: Path) -> None:
    job = _classified(stack, tmp_path)
    reviews.record(stack.db_url, job, 5, "corrected", correction="negative", reviewer="ana")
    lines = io.StringIO()
    export.write(stack.db_url, job, "jsonl", lines)
    row = next(r for r in map(json.loads, lines.getvalue().splitlines()) if r["id"] == "r5")
    assert (row["status"], row["label"]) == ("succeeded", "negative")
    output, errors = io.StringIO(), io.StringIO()
    export.write(stack.db_url, job, "openai", output, errors=errors)
    assert "r5" not in errors.getvalue()
    line = next(json.loads(x) for x in output.getvalue().splitlines()
                if json.loads(x)["custom_id"] == "r5")
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "negative"
