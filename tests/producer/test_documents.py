"""Documents on real files the tests write: PDF, DOCX, HTML, Markdown and text give their
text and metadata; unreadable ones are named with a reason and leave the job standing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Invoke, Stack
from samples import HTML, PAGES, write_docx, write_encrypted_pdf, write_image_pdf, write_pdf
from sqlalchemy import select

from producer import documents
from producer.documents import extract
from producer.readers import Row, RowError, Skipped, detect_format, read
from schemas import db, dedup
from schemas.errors import InputError, UnreadableDocument
from schemas.spec import JobSpec
from schemas.tables import Item
from worker.prompts import user_prompt


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unreadable(path: Path) -> str:
    with pytest.raises(UnreadableDocument) as caught:
        extract(path)
    return str(caught.value)


def test_multi_page_pdf_gives_every_page_in_order_with_its_page_count(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "report.pdf", PAGES)
    doc = extract(path)
    assert doc.text == "\n\n".join(PAGES)
    assert (doc.pages, doc.size, doc.sha256) == (3, path.stat().st_size, sha(doc.text))


def test_docx_gives_paragraphs_and_tables_in_document_order(tmp_path: Path) -> None:
    path = write_docx(tmp_path / "minutes.docx")
    doc = extract(path)
    assert doc.text == ("Minutes\n\nThe board met on Monday.\n\nItem | Vote\nBudget | Yes\n\n"
                        "The meeting closed at noon.")
    assert (doc.pages, doc.size, doc.sha256) == (None, path.stat().st_size, sha(doc.text))


def test_html_gives_the_main_text_without_scripts_navigation_or_page_furniture(
        tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(HTML, encoding="utf-8")
    doc = extract(path)
    assert doc.text == ("Quarterly report\n\nRevenue grew by twelve percent.\n\n"
                        "Costs fell.\nMargins rose.\n\nRegion | Sales\nNorth | 40")
    assert "NOISE" not in doc.text and "Site title" not in doc.text
    assert (doc.pages, doc.size, doc.sha256) == (None, len(HTML.encode()), sha(doc.text))


def test_html_keeps_an_articles_own_header_and_footer(tmp_path: Path) -> None:
    path = tmp_path / "post.html"
    path.write_text("<body><header>HEADERNOISE</header><article><header><h1>Title</h1>"
                    "</header><p>Body.</p><footer>By Ann.</footer></article>"
                    "<footer>FOOTERNOISE</footer></body>")
    assert extract(path).text == "Title\n\nBody.\n\nBy Ann."


def test_html_without_main_reads_the_body_and_its_declared_encoding(tmp_path: Path) -> None:
    path = tmp_path / "old.htm"
    path.write_bytes('<html><head><meta charset="iso-8859-1"></head><body><nav>NAVNOISE</nav>'
                     '<p>Caf\u00e9 cr\u00e8me</p></body></html>'.encode("iso-8859-1"))
    assert extract(path).text == "Caf\u00e9 cr\u00e8me"


def test_markdown_and_text_are_read_as_written(tmp_path: Path) -> None:
    md = tmp_path / "notes.md"
    md.write_text("# Notes\n\n- one\n- two\n", encoding="utf-8")
    txt = tmp_path / "plain.txt"
    txt.write_bytes("\ufeffLine one.\r\nLine two.\r\n".encode())
    assert (extract(md).text, extract(md).pages, extract(md).size) == (
        "# Notes\n\n- one\n- two", None, md.stat().st_size)
    assert extract(txt).text == "Line one.\nLine two."


def test_hash_is_of_the_text_so_files_that_read_the_same_share_it(tmp_path: Path) -> None:
    (tmp_path / "unix.txt").write_bytes(b"Same words.\n")
    (tmp_path / "dos.txt").write_bytes(b"Same words.\r\n")
    first, second = extract(tmp_path / "unix.txt"), extract(tmp_path / "dos.txt")
    assert first.size != second.size
    assert first.sha256 == second.sha256 == sha("Same words.")
    assert extract(write_pdf(tmp_path / "p.pdf", ["Other words."])).sha256 != first.sha256


def test_encrypted_pdf_is_unreadable_without_its_password(tmp_path: Path) -> None:
    assert unreadable(write_encrypted_pdf(tmp_path / "locked.pdf", "secret")) == \
        "encrypted PDF: it needs a password"


def test_pdf_encrypted_with_an_empty_user_password_is_read(tmp_path: Path) -> None:
    assert extract(write_encrypted_pdf(tmp_path / "restricted.pdf", "")).text == PAGES[0]


def test_scanned_pdf_without_a_text_layer_is_unreadable(tmp_path: Path) -> None:
    reason = unreadable(write_image_pdf(tmp_path / "scan.pdf"))
    assert reason.startswith("no text layer in 2 page(s)") and "OCR" in reason


def test_empty_corrupt_and_unknown_files_are_unreadable_with_their_reason(
        tmp_path: Path) -> None:
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "blank.txt").write_text(" \n\n")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 4)
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "locked.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "README").write_text("words")
    (tmp_path / "folder.txt").mkdir()
    assert unreadable(tmp_path / "empty.pdf") == "empty file"
    assert unreadable(tmp_path / "blank.txt") == "no text in the document"
    assert unreadable(tmp_path / "broken.pdf").startswith("not a readable PDF (")
    assert unreadable(tmp_path / "broken.docx").startswith("not a readable DOCX (")
    assert unreadable(tmp_path / "locked.docx").startswith("password-protected DOCX")
    assert unreadable(tmp_path / "latin1.txt") == "not UTF-8 text (byte 0xe9 at offset 3)"
    assert unreadable(tmp_path / "photo.png").startswith("unsupported file type '.png'")
    assert unreadable(tmp_path / "README").startswith("unsupported file without an extension")
    assert unreadable(tmp_path / "folder.txt") == "cannot open: Is a directory"


def mixed_folder(root: Path) -> Path:
    """Every kind of document, readable and not, some in a subfolder."""
    (root / "sub").mkdir(parents=True)
    write_pdf(root / "report.pdf", PAGES)
    write_docx(root / "sub" / "minutes.docx")
    (root / "page.html").write_text(HTML, encoding="utf-8")
    (root / "notes.md").write_text("# Notes\n\nShort.", encoding="utf-8")
    (root / "sub" / "plain.txt").write_text("Plain words.", encoding="utf-8")
    write_encrypted_pdf(root / "locked.pdf", "secret")
    write_image_pdf(root / "scan.pdf")
    (root / "empty.txt").write_bytes(b"")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    (root / "photo.png").write_bytes(b"\x89PNG\r\n")
    (root / ".hidden.txt").write_text("never read")
    return root


UNREADABLE = {"broken.pdf", "empty.txt", "locked.pdf", "photo.png", "scan.pdf"}
READABLE = ["notes.md", "page.html", "report.pdf", "sub/minutes.docx", "sub/plain.txt"]


def test_folder_gives_a_row_per_readable_document_and_names_the_rest(tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "docs")
    result = list(read(folder, "auto", "{{ name }} ({{ pages }}): {{ text }}"))
    rows = [r for r in result if isinstance(r, Row)]
    skipped = {Path(s.document).name: s.reason for s in result if isinstance(s, Skipped)}
    assert [r.key for r in rows] == READABLE
    assert set(skipped) == UNREADABLE and all(skipped.values())
    report = rows[2].payload
    assert report == {"text": "\n\n".join(PAGES), "document": str(folder / "report.pdf"),
                      "path": "report.pdf", "pages": 3,
                      "size": (folder / "report.pdf").stat().st_size,
                      "sha256": sha("\n\n".join(PAGES))}
    spec = JobSpec(template="{{ name }} ({{ pages }}): {{ text }}")
    assert user_prompt(spec, rows[4].payload) == "plain (None): Plain words."


def test_glob_reads_the_matching_files_named_below_its_fixed_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mixed_folder(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    pattern = Path("docs/**/*.pdf")
    assert detect_format(pattern) == "documents"
    result = list(read(pattern, "auto", None))
    assert [r.key for r in result if isinstance(r, Row)] == ["report.pdf"]
    assert sorted(s.document for s in result if isinstance(s, Skipped)) == \
        ["docs/broken.pdf", "docs/locked.pdf", "docs/scan.pdf"]
    with pytest.raises(InputError, match="no documents"):
        list(read(Path("docs/*.png"), "auto", None))


def test_jsonl_of_paths_is_detected_and_read_from_its_own_folder(tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "docs")
    listing = tmp_path / "docs" / "list.jsonl"
    listing.write_text("\n".join(json.dumps(r) for r in [
        {"path": "report.pdf"}, {"id": "m", "path": "sub/minutes.docx"},
        {"path": "locked.pdf"}, {"path": "missing.pdf"}, {"path": "x", "prompt": "no"},
        {"id": 7}]) + "\n")
    assert detect_format(listing) == "paths"
    result = list(read(listing, "auto", None))
    assert [(r.line, r.key) for r in result if isinstance(r, Row)] == \
        [(1, "report.pdf"), (2, "m")]
    assert [r.payload["document"] for r in result if isinstance(r, Row)] == \
        [str(folder / "report.pdf"), str(folder / "sub" / "minutes.docx")]
    assert [(Path(s.document).name, s.reason.split(":")[0]) for s in result
            if isinstance(s, Skipped)] == [("locked.pdf", "encrypted PDF"),
                                           ("missing.pdf", "cannot open")]
    assert [e.line for e in result if isinstance(e, RowError)] == [5, 6]


def test_prompt_rows_with_a_path_field_are_not_taken_for_a_paths_file(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "a", "path": "x.pdf", "prompt": "Hi"}) + "\n")
    assert detect_format(path) == "jsonl"


def test_one_document_file_is_a_one_item_input(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "report.pdf", PAGES)
    (tmp_path / "note.txt").write_text("Just words, not JSON.")
    assert detect_format(path) == "documents"
    assert detect_format(tmp_path / "note.txt") == "documents"
    assert [(type(r), getattr(r, "key", None)) for r in read(path, "auto", None)] == \
        [(Row, "report.pdf")]


def test_documents_parsed_in_parallel_keep_their_order_and_their_own_text(
        tmp_path: Path) -> None:
    for n in range(40):
        write_pdf(tmp_path / f"{n:02}.pdf", [f"Document {n:02}. " * (1 + n % 7)])
    result = [r for r in read(tmp_path, "documents", "{{ text }}") if isinstance(r, Row)]
    assert [r.key for r in result] == [f"{n:02}.pdf" for n in range(40)]
    assert all(r.payload["text"].startswith(f"Document {r.key[:2]}.") for r in result)


def test_a_parser_process_that_dies_fails_no_document(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = mixed_folder(tmp_path / "docs")
    parent, real = os.getpid(), documents.extract

    def dies_in_a_child(path: Path, **limits: int) -> documents.Document:
        if os.getpid() != parent and path.name == "report.pdf":
            os._exit(1)  # what the kernel's OOM killer or a crashing C parser looks like
        return real(path, **limits)

    monkeypatch.setattr(documents, "extract", dies_in_a_child)
    assert len(os.sched_getaffinity(0)) >= 2  # the pool is in use
    result = list(read(folder, "auto", None))
    assert [r.key for r in result if isinstance(r, Row)] == READABLE
    assert {Path(s.document).name for s in result if isinstance(s, Skipped)} == UNREADABLE


def test_a_document_over_the_size_limit_is_skipped_by_its_size_without_being_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pdf(tmp_path / "report.pdf", PAGES)  # parsed in a forked process
    (tmp_path / "small.txt").write_text("Small words.")
    (tmp_path / "big.txt").write_text("Big words. " * 200)  # 2,200 bytes
    limit = (tmp_path / "report.pdf").stat().st_size - 1
    opened: list[str] = []
    real = documents.READERS[".txt"]
    monkeypatch.setitem(documents.READERS, ".txt",
                        lambda path: opened.append(path.name) or real(path))
    result = list(read(tmp_path, "documents", None, max_document_bytes=2048))
    assert [r.key for r in result if isinstance(r, Row)] == ["report.pdf", "small.txt"]
    assert result[0] == Skipped(str(tmp_path / "big.txt"), "2.1 KiB, over the 2 KiB document "
                                "size limit (submit --max-document-bytes)")
    assert opened == ["small.txt"]
    skipped = [s for s in read(tmp_path, "documents", None, max_document_bytes=limit)
               if isinstance(s, Skipped)]
    assert [Path(s.document).name for s in skipped] == ["big.txt", "report.pdf"]


def test_the_default_size_limit_is_50_mib(tmp_path: Path) -> None:
    assert documents.MAX_BYTES == 50 * 1024 * 1024
    with (tmp_path / "huge.txt").open("wb") as fh:
        fh.truncate(60 * 1024 * 1024)  # sparse: no disk, and never read
    assert unreadable(tmp_path / "huge.txt") == ("60 MiB, over the 50 MiB document size "
                                                 "limit (submit --max-document-bytes)")


@pytest.mark.parametrize(("text", "size"), [
    ("52428800", 52_428_800), ("50MiB", 52_428_800), ("50 mib", 52_428_800),
    ("50MB", 50_000_000), ("1.5GiB", 1_610_612_736), ("200kb", 200_000), ("1", 1)])
def test_sizes_are_read_in_bytes_decimal_or_binary_units(text: str, size: int) -> None:
    assert documents.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "50XB", "-1", "0", "0.1", "MB", "5 0MB"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        documents.parse_size(text)


def test_a_document_payload_holds_its_text_once_with_the_same_content_key(
        tmp_path: Path) -> None:
    """The prompt is rendered by the worker from the text; a document's content key (its
    text's hash and the job) is what it was when the payload also held the prompt."""
    (tmp_path / "a.md").write_text("# Lighthouse\n\nThe keeper logged the weather.")
    [row] = read(tmp_path, "documents", "Summarize:\n\n{{ text }}")
    assert isinstance(row, Row)
    assert json.dumps(row.payload).count("The keeper logged the weather.") == 1
    spec = JobSpec(template="Summarize:\n\n{{ text }}")
    before = {"prompt": "Summarize:\n\n" + row.payload["text"],
              **{k: v for k, v in row.payload.items() if k != "path"}}
    fingerprint = dedup.fingerprint(spec)
    assert dedup.content_key(fingerprint, spec, row.payload, b"") == \
        dedup.content_key(fingerprint, spec, before, b"") is not None
    assert user_prompt(spec, row.payload) == before["prompt"]


def test_a_template_a_document_cannot_render_is_that_rows_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Alpha")
    [error] = read(tmp_path, "documents", "{{ title }}: {{ text }}")
    assert isinstance(error, RowError)
    assert error.reason.startswith("a.txt: template: 'title' is undefined")


# The command line, on real SQL and Redis (no worker).

def payloads(stack: Stack, job_id: str) -> dict[str, dict[str, Any]]:
    with db.session(stack.db_url) as session:
        return {key: payload for key, payload in session.execute(
            select(Item.key, Item.payload).where(Item.job_id == job_id).order_by(Item.seq))}


def test_submit_folder_json_names_skipped_documents_and_creates_the_job(
        stack: Stack, run: Invoke, tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "docs")
    out = json.loads(run("submit", str(folder), "--template", "Summarize: {{ text }}",
                         "--json").stdout)
    assert (out["items"], out["invalid"]) == (5, 0)
    assert {Path(s["document"]).name for s in out["skipped"]} == UNREADABLE
    assert all(set(s) == {"document", "reason"} and s["reason"] for s in out["skipped"])
    stored = payloads(stack, out["job_id"])
    assert list(stored) == READABLE
    assert {k for p in stored.values() for k in p} == \
        {"text", "document", "path", "pages", "size", "sha256"}
    spec = JobSpec(template="Summarize: {{ text }}")
    assert user_prompt(spec, stored["sub/minutes.docx"]).startswith("Summarize: Minutes\n\n")


def test_submit_without_json_prints_the_job_and_names_each_unreadable_file(
        stack: Stack, run: Invoke, tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "docs")
    result = run("submit", str(folder), "--template", "{{ text }}")
    assert len(result.stdout.strip()) == 32 and "skipped" not in result.stdout
    named = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert sorted(Path(line.split(":")[0].removeprefix("skipped ")).name for line in named) == \
        sorted(UNREADABLE)
    assert "5 unreadable documents skipped" in result.stderr


def test_submit_glob_and_paths_file(stack: Stack, run: Invoke, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    mixed_folder(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    by_glob = json.loads(run("submit", "docs/**/*.docx", "--json").stdout)
    assert (by_glob["items"], by_glob["skipped"]) == (1, [])
    assert list(payloads(stack, by_glob["job_id"])) == ["sub/minutes.docx"]

    listing = tmp_path / "files.jsonl"
    listing.write_text('{"id": "r", "path": "docs/report.pdf"}\n{"path": "docs/scan.pdf"}\n')
    by_list = json.loads(run("submit", str(listing), "--format", "paths", "--json").stdout)
    assert by_list["items"] == 1
    assert [s["document"] for s in by_list["skipped"]] == [str(tmp_path / "docs" / "scan.pdf")]
    assert payloads(stack, by_list["job_id"])["r"]["pages"] == 3


def test_submit_of_only_unreadable_documents_creates_no_job(run: Invoke, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    result = run("submit", str(tmp_path), "--json", code=2)
    assert "no valid rows (1 unreadable documents); no job was created" in result.stderr


def test_submit_skips_documents_over_max_document_bytes_and_says_why(
        stack: Stack, run: Invoke, tmp_path: Path) -> None:
    (tmp_path / "small.txt").write_text("Small words.")
    (tmp_path / "big.txt").write_text("Big words. " * 200)
    out = json.loads(run("submit", str(tmp_path), "--max-document-bytes", "1KB",
                         "--json").stdout)
    assert out["items"] == 1
    assert out["skipped"] == [{"document": str(tmp_path / "big.txt"), "reason":
                               "2.1 KiB, over the 1 KB document size limit "
                               "(submit --max-document-bytes)"}]
    text = run("submit", str(tmp_path), "--max-document-bytes", "2000")
    assert f"skipped {tmp_path / 'big.txt'}: 2.1 KiB, over the 2 KB" in text.stderr
    assert "1 unreadable documents skipped" in text.stderr


def test_submit_refuses_a_max_document_bytes_that_is_not_a_size(run: Invoke,
                                                                tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Alpha")
    result = run("submit", str(tmp_path), "--max-document-bytes", "lots", code=2)
    assert "'lots' is not a size" in result.output
