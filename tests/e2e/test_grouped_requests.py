"""Prefix-aware order on the real engine: a job whose questions come in question order
runs grouped by document, and nothing about a request changes. Its export is in the
input's order. A small greedy job, so its answers can be compared with a run of the
same requests in document order (vLLM on CPU is not batch-invariant: larger or sampled
jobs are compared by their requests alone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Stack
from sqlalchemy import select

from schemas import db
from schemas.tables import Item, Result

DOCUMENTS = [
    "The lighthouse on Gull Rock was built in 1874 from granite quarried on the island. "
    "Its lamp burned whale oil until 1901, then kerosene, and it was automated in 1962. ",
    "Marta runs a bakery on Elm Street. She opens at six, bakes rye bread on Mondays and "
    "sells out of cinnamon rolls by nine. Her oven was made in Sweden in 1988. ",
    "The river Amble floods every spring. In 1997 the water reached the church steps, "
    "and the town built a levee of earth and stone two metres high the next summer. ",
    "A kestrel hovers over the meadow at dusk, watching for voles. It nests in the old "
    "oak by the gate and lays four or five speckled eggs each April. ",
]
QUESTIONS = ["What year is mentioned first?", "Name one material mentioned.",
             "Who or what is the text about?"]


def _request(d: int, q: int) -> dict[str, Any]:
    text = DOCUMENTS[d] * 3 + f"\n\nQuestion: {QUESTIONS[q]} Answer in a few words."
    return {"custom_id": f"doc{d}-q{q}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"max_tokens": 8, "temperature": 0,
                     "messages": [{"role": "user", "content": text}]}}


def _submit(stack: Stack, path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    job_id: str = stack.cli_json("submit", str(path), "--json", "--chunk-size", "3")["job_id"]
    assert stack.wait_final(job_id)["succeeded"] == len(rows)
    return job_id


def _by_id(stack: Stack, job_id: str) -> dict[str, tuple[Any, ...]]:
    with db.session(stack.db_url) as session:
        found = session.execute(
            select(Item.key, Item.chunk, Result.prompt, Result.sampling, Result.output)
            .join(Result, (Result.job_id == Item.job_id) & (Result.item_seq == Item.seq))
            .where(Item.job_id == job_id)).all()
    return {key: tuple(rest) for key, *rest in found}


def test_questions_in_question_order_run_by_document_with_the_same_requests_and_answers(
        engine_stack: Stack, tmp_path: Path) -> None:
    asked = [_request(d, q) for q in range(3) for d in range(4)]  # as files usually come
    grouped = [_request(d, q) for d in range(4) for q in range(3)]
    ordered = _by_id(engine_stack, _submit(engine_stack, tmp_path / "asked.jsonl", asked))
    plain = _by_id(engine_stack, _submit(engine_stack, tmp_path / "grouped.jsonl", grouped))

    for d in range(4):  # each document's questions ran in one chunk of their own
        assert len({ordered[f"doc{d}-q{q}"][0] for q in range(3)}) == 1
    assert len({ordered[f"doc{d}-q0"][0] for d in range(4)}) == 4
    for key, (_, prompt, sampling, output) in ordered.items():
        assert (prompt, sampling) == plain[key][1:3], f"{key}: its request changed"
        assert output == plain[key][3], f"{key}: a greedy answer changed with the order"


def test_the_export_of_a_reordered_job_is_in_the_inputs_order(
        engine_stack: Stack, tmp_path: Path) -> None:
    asked = [_request(d, q) for q in range(3) for d in range(4)]
    job_id = _submit(engine_stack, tmp_path / "asked.jsonl", asked)
    out = engine_stack.cli("results", job_id, "--format", "openai").stdout
    assert [json.loads(line)["custom_id"] for line in out.splitlines()] == [
        row["custom_id"] for row in asked]
