"""Turn one document file (PDF, DOCX, HTML, Markdown, text) into its text and metadata.

A file that cannot give text raises `UnreadableDocument` with a one-line reason, so a
folder of ten thousand files skips the few bad ones by name instead of failing them all.

`sha256` is the hash of the extracted text (UTF-8), not of the file's bytes: the text is
what the model sees, so two files that read the same (a PDF re-saved with a new date, a
text file with CRLF line ends) get the same hash and can share one answer.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from schemas.errors import UnreadableDocument

# pypdf logs every repair it makes to a damaged file; the reader says what matters.
logging.getLogger("pypdf").setLevel(logging.ERROR)

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
HTML_NOISE = ["script", "style", "noscript", "template", "nav", "aside", "form", "button",
              "select", "iframe", "svg", "canvas", "object", "embed"]
# A page's header and footer are furniture; an article's or section's own are its content.
PAGE_FURNITURE = ["header", "footer"]
SECTIONS = ["article", "section", "main"]
NOISE_ROLES = ["navigation", "banner", "contentinfo", "search"]
HTML_BLOCKS = ["p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6",
               "ul", "ol", "dl", "table", "blockquote", "pre",
               "figure", "figcaption", "hr", "address", "details", "summary"]
HTML_LINES = ["li", "tr", "dt", "dd"]
_SPACES = re.compile(r"\s+")
AHEAD_PER_PROCESS = 4
# A file is read whole, parsed, and its text stored in SQL: 50 MiB is thousands of pages of
# PDF or a long book as text; a larger file is more often a dump or a scan than a document.
MAX_BYTES = 50 * 1024 * 1024
SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
              "kib": 1024, "mib": 1024**2, "gib": 1024**3}
SHOWN_UNITS = [("GiB", 1024**3), ("GB", 1000**3), ("MiB", 1024**2), ("MB", 1000**2),
               ("KiB", 1024), ("KB", 1000)]
T = TypeVar("T")


@dataclass(frozen=True)
class Document:
    path: Path
    text: str
    pages: int | None
    size: int
    sha256: str


def extract(path: Path, *, max_bytes: int = MAX_BYTES) -> Document:
    """The document's text and metadata; raises UnreadableDocument with the reason. A file
    over `max_bytes` is refused by its size, before it is read."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        kind = f"file type {path.suffix!r}" if path.suffix else "file without an extension"
        raise UnreadableDocument(f"unsupported {kind} (nightshift reads {', '.join(READERS)})")
    try:
        size = path.stat().st_size
        if size == 0:
            raise UnreadableDocument("empty file")
        if size > max_bytes:
            raise UnreadableDocument(f"{show_size(size)}, over the {show_size(max_bytes)} "
                                     "document size limit (submit --max-document-bytes)")
        text, pages = reader(path)
    except OSError as exc:
        raise UnreadableDocument(f"cannot open: {exc.strerror or exc}") from None
    text = _clean(text)
    if not text:
        raise UnreadableDocument("no text in the document")
    return Document(path, text, pages, size, hashlib.sha256(text.encode("utf-8")).hexdigest())


def extract_each(items: Iterable[tuple[T, Path | None]], *, max_bytes: int = MAX_BYTES
                 ) -> Iterator[tuple[T, Document | UnreadableDocument | None]]:
    """Each item's document (or why not; None where there is no path), in input order.

    Parsing is pure Python (pypdf reads ~75 pages/s on one core here), so on Linux PDF,
    DOCX and HTML files are parsed in one forked process per CPU, a bounded window ahead
    of the reader: a folder of 10,000 PDFs takes the machine's cores, not one, and memory
    stays flat. Text and Markdown are read here (a process costs more than they do).
    """
    processes = len(os.sched_getaffinity(0)) if sys.platform == "linux" else 1
    pool: ProcessPoolExecutor | None = None
    window: deque[tuple[T, Path | None, Future[Document | UnreadableDocument] | None]] = deque()
    try:
        for tag, path in items:
            future = None
            if processes > 1 and path is not None and path.suffix.lower() in PARSED:
                # fork: no re-import of the caller's __main__ (spawn and forkserver need it
                # guarded); started on the first file worth a process, so text never pays.
                pool = pool or ProcessPoolExecutor(processes, multiprocessing.get_context("fork"))
                future = _submit(pool, path, max_bytes)
            window.append((tag, path, future))
            if len(window) >= processes * AHEAD_PER_PROCESS:
                yield _done(*window.popleft(), max_bytes)
        while window:
            yield _done(*window.popleft(), max_bytes)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _submit(pool: ProcessPoolExecutor, path: Path, max_bytes: int
            ) -> Future[Document | UnreadableDocument] | None:
    try:
        return pool.submit(_outcome, path, max_bytes)
    except BrokenProcessPool:
        return None


def _done(tag: T, path: Path | None, future: Future[Document | UnreadableDocument] | None,
          max_bytes: int) -> tuple[T, Document | UnreadableDocument | None]:
    """A parser process that died (killed for memory, a crash in a C parser) takes the pool
    with it: what it left undone is read here, so no file fails for a neighbour's sake."""
    if path is None:
        return tag, None
    if future is not None:
        try:
            return tag, future.result()
        except BrokenProcessPool:
            pass
    return tag, _outcome(path, max_bytes)


def _outcome(path: Path, max_bytes: int) -> Document | UnreadableDocument:
    """The exception is returned, not raised: it crosses back from a worker process as a value."""
    try:
        return extract(path, max_bytes=max_bytes)
    except UnreadableDocument as exc:
        return exc


def supported(path: Path) -> bool:
    return path.suffix.lower() in READERS


def parse_size(text: str) -> int:
    """Bytes from `52428800`, `50MB` (decimal) or `50MiB` (binary); ValueError otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if found is None or found[2] not in SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 52428800, 50MB, 50MiB)")
    size = int(float(found[1]) * SIZE_UNITS[found[2]])
    if size < 1:
        raise ValueError(f"{text!r}: a size must be at least one byte")
    return size


def show_size(size: int) -> str:
    """`50 MiB` or `200 MB` where a unit divides the size, else `2.1 KiB`, or bytes."""
    for unit, scale in SHOWN_UNITS:
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _clean(text: str) -> str:
    """Line ends, NULs and lone surrogates are normalized: SQL JSON columns refuse the last two."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8").strip()


def _pdf(path: Path) -> tuple[str, int | None]:
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise UnreadableDocument("encrypted PDF: it needs a password")
        texts = [page.extract_text() or "" for page in reader.pages]
    except UnreadableDocument:
        raise
    except Exception as exc:  # a damaged file fails in many ways inside pypdf; each is that file's
        raise UnreadableDocument(f"not a readable PDF ({_first_line(exc)})") from None
    if not any(t.strip() for t in texts):
        raise UnreadableDocument(f"no text layer in {len(texts)} page(s): a scanned or "
                                 "image-only PDF (run OCR on it first)")
    return "\n\n".join(t.strip() for t in texts), len(texts)


def _docx(path: Path) -> tuple[str, int | None]:
    """Paragraphs and tables in document order; page count is None (Word lays pages out)."""
    import docx
    from docx.table import Table

    with path.open("rb") as fh:
        if fh.read(len(OLE_MAGIC)) == OLE_MAGIC:
            raise UnreadableDocument("password-protected DOCX, or an old .doc saved as .docx")
    try:
        document = docx.Document(str(path))
        blocks = [_table_text(b) if isinstance(b, Table) else b.text
                  for b in document.iter_inner_content()]
    except Exception as exc:  # a damaged zip or XML part; that file's problem alone
        raise UnreadableDocument(f"not a readable DOCX ({_first_line(exc)})") from None
    return "\n\n".join(b.strip() for b in blocks if b.strip()), None


def _table_text(table: Any) -> str:
    rows = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:  # a merged cell repeats; keep it once
            if not cells or cell.text != cells[-1]:
                cells.append(cell.text.strip())
        rows.append(" | ".join(cells))
    return "\n".join(rows)


def _html(path: Path) -> tuple[str, int | None]:
    """The page's content without scripts, styles, navigation, headers and footers.

    BeautifulSoup over lxml (python-docx needs lxml anyway) with the HTML5 elements and
    ARIA roles that mark page furniture removed; `<main>` is the text when the page has it.
    """
    from bs4 import BeautifulSoup, NavigableString

    try:
        soup = BeautifulSoup(path.read_bytes(), "lxml")
    except Exception as exc:  # lxml refuses very little; whatever it refuses is that file's
        raise UnreadableDocument(f"not readable HTML ({_first_line(exc)})") from None
    noise = soup.find_all(HTML_NOISE) + soup.find_all(role=NOISE_ROLES) + \
        soup.find_all(hidden=True) + soup.find_all(True, {"aria-hidden": "true"}) + \
        [e for e in soup.find_all(PAGE_FURNITURE) if e.find_parent(SECTIONS) is None]
    for element in noise:
        if not element.decomposed:
            element.decompose()
    root = soup.find("main") or soup.body or soup
    for string in root.find_all(string=True):
        if type(string) is NavigableString and string.find_parent("pre") is None:
            string.replace_with(_SPACES.sub(" ", string))
    for br in root.find_all("br"):
        br.replace_with("\n")
    for cell in root.find_all(["td", "th"]):
        if cell.find_previous_sibling(["td", "th"]) is not None:
            cell.insert_before(" | ")
    for line in root.find_all(HTML_LINES):
        line.insert_after("\n")
    for block in root.find_all(HTML_BLOCKS):
        block.insert_before("\n\n")
        block.insert_after("\n\n")
    text = re.sub(r"[ \t]+\n", "\n", root.get_text())
    text = re.sub(r"\n (?=\S)", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text), None


def _text(path: Path) -> tuple[str, int | None]:
    """Plain text and Markdown, as written (a model reads Markdown as it is)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        raise UnreadableDocument(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                 f"{exc.start})") from None


def _first_line(exc: Exception) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


READERS: dict[str, Callable[[Path], tuple[str, int | None]]] = {
    ".pdf": _pdf, ".docx": _docx, ".html": _html, ".htm": _html, ".xhtml": _html,
    ".md": _text, ".markdown": _text, ".txt": _text,
}
PARSED = frozenset(suffix for suffix, reader in READERS.items() if reader is not _text)
