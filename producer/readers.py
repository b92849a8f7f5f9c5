"""Stream an input (JSONL, OpenAI batch JSONL, CSV, a folder of documents) into rows.

Each input row becomes either a `Row` (its id and the payload the worker will send)
or a `RowError` (its line number and why). Nothing is read whole: files are
streamed line by line, so a million-row file costs what one row costs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.errors import InputError
from schemas.render import render
from schemas.rows import OpenAIRequest, PromptRow, reason

DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown")
FORMATS = ("auto", "jsonl", "openai", "csv", "documents")


@dataclass(frozen=True)
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


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "documents"
    if path.suffix.lower() == ".csv":
        return "csv"
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    return "jsonl"
                is_openai = isinstance(first, dict) and "custom_id" in first and "body" in first
                return "openai" if is_openai else "jsonl"
    raise InputError(f"{path} is empty: no rows to submit")


def read(path: Path, fmt: str, template: str | None) -> Iterator[Row | RowError]:
    """Rows of any supported input, in order, each already validated."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "documents":
        yield from _documents(path, template or "{{ text }}")
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
    try:
        row = PromptRow.model_validate(obj)
    except ValidationError as exc:
        return RowError(line, reason(exc))
    return Row(line, key, row.model_dump(exclude_none=True, exclude={"id"}))


def _documents(folder: Path, template: str) -> Iterator[Row | RowError]:
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and p.suffix.lower() in DOCUMENT_SUFFIXES)
    if not files:
        raise InputError(f"{folder} holds no {'/'.join(DOCUMENT_SUFFIXES)} documents")
    for number, path in enumerate(files, start=1):
        relative = str(path.relative_to(folder))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            yield RowError(number, f"{relative}: not UTF-8 ({exc.reason})")
            continue
        if not text.strip():
            yield RowError(number, f"{relative}: empty document")
            continue
        fields = {"text": text, "path": relative, "name": path.stem}
        try:
            prompt = render(template, fields)
        except ValueError as exc:
            yield RowError(number, f"{relative}: {exc}")
            continue
        yield Row(number, relative, {"prompt": prompt, "document": relative})
