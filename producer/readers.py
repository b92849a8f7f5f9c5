"""Stream an input (JSONL, OpenAI batch JSONL, CSV, documents) into rows.

Each input row becomes either a `Row` (its id and the payload the worker will send)
or a `RowError` (its line number and why). Nothing is read whole: files are
streamed line by line, so a million-row file costs what one row costs.

Documents (a folder, a glob, one file, or a JSONL of `{"path"}` / `{"id", "path"}`
rows: the "paths" format) become one row each; a document that gives no text is a
`Skipped` (its name and why), which leaves the job standing.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from pydantic import ValidationError

from producer import documents
from schemas.errors import InputError, UnreadableDocument, reason
from schemas.render import render
from schemas.rows import OpenAIRequest, PromptRow

PATHS_KEYS = frozenset({"id", "path"})
GLOB_MAGIC = re.compile(r"[*?[]")
# The common row, `{"id", "prompt"}`, is checked without pydantic: same verdict, a
# tenth of the cost. Anything else goes through PromptRow for its exact message.
PLAIN_KEYS = frozenset({"id", "prompt"})
PLAIN_IDS = (str, int, type(None))
_decode = msgspec.json.Decoder().decode


@dataclass(slots=True)  # one per input line: a frozen dataclass's __init__ took 1 µs of ~12
class Row:
    line: int
    key: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Skipped:
    """A document that gives no text: named, with why, and left out of the job."""

    document: str
    reason: str

    def __str__(self) -> str:
        return f"{self.document}: {self.reason}"


def detect_format(path: Path) -> str:
    """By the path, then the first row: a row of only `path` (and `id`) means a paths file."""
    if path.is_dir() or is_glob(path):
        return "documents"
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.suffix.lower() == ".csv":
        return "csv"
    if documents.supported(path) and path.suffix.lower() != ".txt":
        return "documents"
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    return "documents" if path.suffix.lower() == ".txt" else "jsonl"
                if isinstance(first, dict) and "path" in first and first.keys() <= PATHS_KEYS:
                    return "paths"
                is_openai = isinstance(first, dict) and "custom_id" in first and "body" in first
                return "openai" if is_openai else "jsonl"
    raise InputError(f"{path} is empty: no rows to submit")


def is_glob(path: Path) -> bool:
    return not path.exists() and GLOB_MAGIC.search(str(path)) is not None


def read(path: Path, fmt: str, template: str | None, *,
         max_document_bytes: int = documents.MAX_BYTES) -> Iterator[Row | RowError | Skipped]:
    """Rows of any supported input, in order, each already validated; a document file over
    `max_document_bytes` is Skipped unread."""
    if not path.exists() and not is_glob(path):
        raise InputError(f"{path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "documents":
        yield from _documents(_document_files(path), template or "{{ text }}",
                              max_document_bytes)
    elif fmt == "paths":
        yield from _documents(_listed_files(path), template or "{{ text }}",
                              max_document_bytes)
    elif fmt == "csv":
        yield from _csv(path, template)
    elif fmt == "openai":
        yield from _openai(path)
    else:
        yield from _jsonl(path, template)


def _lines(path: Path) -> Iterator[tuple[int, Any] | RowError]:
    """(line number, parsed JSON) per non-blank line, or the reason it isn't JSON."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:  # the fast decoder takes well-formed lines; the rest get json's messages
                parsed = _decode(raw)
            except (msgspec.DecodeError, ValueError):
                pass
            else:
                yield number, parsed
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RowError(number, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                       f"{exc.start + 1})")
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                yield RowError(number, f"malformed JSON: {exc.msg} (column {exc.colno})")


def _jsonl(path: Path, template: str | None) -> Iterator[Row | RowError]:
    for parsed in _lines(path):
        if isinstance(parsed, RowError):
            yield parsed
        else:
            yield _fields_row(parsed[0], parsed[1], template)


def _openai(path: Path) -> Iterator[Row | RowError]:
    for parsed in _lines(path):
        if isinstance(parsed, RowError):
            yield parsed
            continue
        number, obj = parsed
        try:
            request = OpenAIRequest.model_validate(obj)
        except ValidationError as exc:
            yield RowError(number, reason(exc))
            continue
        yield Row(number, request.custom_id, request.payload())


def _csv(path: Path, template: str | None) -> Iterator[Row | RowError]:
    with path.open("rb") as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        reader = csv.DictReader(text, strict=True)
        try:
            for record in reader:
                line = reader.line_num
                if None in record or None in record.values():
                    yield RowError(line, f"expected {len(reader.fieldnames or [])} columns, "
                                         "got a different number")
                    continue
                yield _fields_row(line, dict(record), template)
        except UnicodeDecodeError as exc:
            where = f"after line {reader.line_num}"
            raise InputError(f"{path}: not UTF-8 {where} ({exc.reason})") from None
        except csv.Error as exc:
            raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if reader.line_num == 0:
        raise InputError(f"{path} is empty: no rows to submit")


def _fields_row(line: int, obj: Any, template: str | None) -> Row | RowError:
    """A JSON or CSV record: rendered through the template, or read as a prompt row."""
    if not isinstance(obj, dict):
        return RowError(line, f"expected a JSON object, got {type(obj).__name__}")
    key = str(obj["id"]) if obj.get("id") not in (None, "") else str(line)
    if template is not None:
        try:
            prompt = render(template, obj)
        except ValueError as exc:
            return RowError(line, str(exc))
        if not prompt.strip():
            return RowError(line, "the template rendered an empty prompt")
        payload: dict[str, Any] = {"prompt": prompt}
        if obj.get("reference") is not None:
            payload["reference"] = str(obj["reference"])
        return Row(line, key, payload)
    text = obj.get("prompt")
    if (type(text) is str and text and type(obj.get("id")) in PLAIN_IDS
            and obj.keys() <= PLAIN_KEYS):
        return Row(line, key, {"prompt": text})
    try:
        row = PromptRow.model_validate(obj)
    except ValidationError as exc:
        return RowError(line, reason(exc))
    return Row(line, key, row.model_dump(exclude_none=True, exclude={"id"}))


def _document_files(path: Path) -> Iterator[tuple[int, str, Path]]:
    """(number, name, file) for a folder (recursive, hidden files left out), a glob or one
    file; names are relative to the folder, or to the glob's fixed leading directories."""
    if path.is_dir():
        base = path
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    elif path.is_file():
        base, files = path.parent, [path]
    else:
        fixed = list(_until_magic(path.parts))
        base = Path(*fixed) if fixed else Path(".")
        files = sorted(p for p in map(Path, glob.iglob(str(path), recursive=True)) if p.is_file())
    if not any(documents.supported(p) for p in files):
        where = "matches" if is_glob(path) else "holds"
        raise InputError(f"{path} {where} no documents ({', '.join(documents.READERS)})")
    for number, file in enumerate(files, start=1):
        yield number, str(file.relative_to(base)), file


def _until_magic(parts: tuple[str, ...]) -> Iterator[str]:
    for part in parts[:-1]:
        if GLOB_MAGIC.search(part):
            return
        yield part


def _listed_files(path: Path) -> Iterator[tuple[int, str, Path] | RowError]:
    """A JSONL of `{"path"}` or `{"id", "path"}`; relative paths are read from the file's
    own folder, so the list travels with the documents."""
    for parsed in _lines(path):
        if isinstance(parsed, RowError):
            yield parsed
            continue
        number, obj = parsed
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or not obj["path"]:
            yield RowError(number, 'expected {"path": "..."} or {"id": ..., "path": "..."}')
        elif extra := sorted(obj.keys() - PATHS_KEYS):
            yield RowError(number, f"{', '.join(extra)}: unknown field in a paths file "
                                   "(only id and path)")
        else:
            name = obj["path"]
            key = str(obj["id"]) if obj.get("id") not in (None, "") else name
            yield number, key, path.parent / name


def _documents(entries: Iterator[tuple[int, str, Path] | RowError], template: str,
               max_bytes: int) -> Iterator[Row | RowError | Skipped]:
    tagged = ((e, None if isinstance(e, RowError) else e[2]) for e in entries)
    for entry, doc in documents.extract_each(tagged, max_bytes=max_bytes):
        if isinstance(entry, RowError):
            yield entry
        elif isinstance(doc, UnreadableDocument):
            yield Skipped(str(entry[2]), str(doc))
        elif doc is not None:
            yield _document_row(*entry, doc, template)


def _document_row(number: int, key: str, file: Path, doc: documents.Document,
                  template: str) -> Row | RowError:
    """The template sees `text`, `path` (the row's name), `name` (the file's stem),
    `document` (the file as given), `pages`, `size` and `sha256`. The payload holds the
    text once, without a prompt: the worker renders the job's template over these fields
    (worker.prompts.document_fields); it is rendered here only to refuse a row it fails on."""
    payload = {"text": doc.text, "document": str(file), "path": key, "pages": doc.pages,
               "size": doc.size, "sha256": doc.sha256}
    try:
        render(template, {**payload, "name": file.stem})
    except ValueError as exc:
        return RowError(number, f"{key}: {exc}")
    return Row(number, key, payload)
