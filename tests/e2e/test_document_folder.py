"""A folder of real documents summarized overnight-style with one command, on the real
engine: one answer per document, the long one split and reduced, the unreadable one
named, a copy answered once, and the per-piece lineage in SQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import Stack
from samples import HTML, write_docx, write_image_pdf, write_pdf
from sqlalchemy import select

from schemas import db
from schemas.tables import Attempt, Item, Piece

TOPICS = ["harbour", "lighthouse", "keeper", "storm", "ferry", "market", "bakery", "school"]


def _long_markdown(path: Path, paragraphs: int = 160) -> Path:
    """Several times the test workers' 2048-token context (about 8,000 tokens)."""
    text = "\n\n".join(
        f"## Part {i}\n\nThe {TOPICS[i % 8]} of the old town was described in the records "
        f"of year {1900 + i}. People remembered how the {TOPICS[(i + 3) % 8]} changed with "
        f"the seasons, and how the {TOPICS[(i + 5) % 8]} kept its own customs for decades."
        for i in range(paragraphs))
    path.write_text(text, encoding="utf-8")
    return path


def test_a_folder_of_documents_gets_one_answer_each_and_the_long_one_is_split_and_reduced(
        engine_stack: Stack, tmp_path: Path, tokenizer: object) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "report.pdf", ["Apples sold well in spring.", "Pears sold well in summer.",
                                    "Plums sold best in autumn."])
    write_docx(docs / "minutes.docx")
    (docs / "page.html").write_text(HTML, encoding="utf-8")
    _long_markdown(docs / "history.md")
    shutil.copy(docs / "minutes.docx", docs / "minutes-copy.docx")
    write_image_pdf(docs / "scan.pdf")

    submitted = engine_stack.cli_json(
        "submit", str(docs), "--json", "--template", "Summarize in one sentence:\n\n{{ text }}",
        "--max-tokens", "48", "--temperature", "0", "--check", "non_empty")
    assert submitted["items"] == 5
    assert [s["document"].endswith("scan.pdf") for s in submitted["skipped"]] == [True]
    job = submitted["job_id"]
    assert engine_stack.wait_final(job, timeout=900)["state"] == "completed"

    out = engine_stack.cli("results", job, "--format", "jsonl").stdout
    lines = {Path(x["document"]).name: x for x in map(json.loads, out.splitlines())}
    assert set(lines) == {"report.pdf", "minutes.docx", "page.html", "history.md",
                          "minutes-copy.docx"}
    for line in lines.values():
        assert line["status"] == "succeeded" and line["output"], line
        assert {"id", "document", "status", "output", "error"} <= set(line)
    assert lines["minutes-copy.docx"]["output"] == lines["minutes.docx"]["output"]

    with db.session(engine_stack.db_url) as session:
        seq = session.scalar(select(Item.seq).where(Item.job_id == job,
                                                    Item.key.like("%history.md")))
        pieces = session.scalars(select(Piece).where(Piece.job_id == job, Piece.item_seq == seq)
                                 .order_by(Piece.piece)).all()
        maps = [p for p in pieces if p.kind == "map"]
        [final] = [p for p in pieces if p.piece == 0]
        assert len(maps) >= 3, "the long document was not split"
        assert final.kind == "reduce" and final.status == "succeeded"
        assert maps[0].start_char == 0 and all(p.status == "succeeded" for p in maps)
        # Lineage: every piece's attempts are in the ledger under its piece number.
        attempted = set(session.scalars(select(Attempt.piece).where(Attempt.job_id == job,
                                                                    Attempt.item_seq == seq)))
        assert attempted == {0, *(p.piece for p in maps)}
    assert lines["history.md"]["output"] == final.output

    per_piece = [json.loads(x) for x in engine_stack.cli(
        "results", job, "--per-piece").stdout.splitlines()]
    history = [x for x in per_piece if x["document"].endswith("history.md")]
    assert [x["piece"] for x in history] == [p.piece for p in maps]
    assert sum(1 for x in per_piece if not x["document"].endswith("history.md")) == 4
