"""The files directory: uploads are written there under a name made from their id, checked
line by line as they arrive (every line one JSON object), and never held whole in memory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec
from sqlalchemy.engine import make_url

from schemas.settings import Settings

COPY_BYTES = 1 << 20
# A request line longer than this is refused (and never buffered whole).
MAX_LINE_BYTES = 16 << 20
_decode = msgspec.json.decode


class UploadRefused(ValueError):
    """The upload is not a batch file nightshift can keep; the message names why."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def directory(settings: Settings) -> Path:
    """The files directory: the setting, else beside a SQLite database, else the user's
    data directory."""
    if settings.files_dir is not None:
        return settings.files_dir
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).resolve().parent / "nightshift-files"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "nightshift" / "files"


def new_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def path_of(settings: Settings, name: str) -> Path:
    return directory(settings) / name


def save(settings: Settings, file_id: str, source: BinaryIO) -> tuple[str, int]:
    """Copy `source` into the files directory; returns the stored name and its size.
    Raises UploadRefused (and keeps nothing) when it is over the limit or not JSONL."""
    folder = directory(settings)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{file_id}.jsonl"
    target = folder / name
    partial = folder / f".{name}.part"
    size, line, tail = 0, 0, b""
    try:
        with partial.open("wb") as out:
            while block := source.read(COPY_BYTES):
                size += len(block)
                if size > settings.max_file_bytes:
                    raise UploadRefused(f"the file is over the limit of {settings.max_file_bytes:,}"
                                        " bytes", too_large=True)
                out.write(block)
                *whole, tail = (tail + block).split(b"\n")
                for text in whole:
                    line += 1
                    _check_line(text, line)
                if len(tail) > MAX_LINE_BYTES:
                    raise UploadRefused(f"line {line + 1} is longer than {MAX_LINE_BYTES:,} "
                                        "bytes")
            if tail:
                _check_line(tail, line + 1)
        if size == 0:
            raise UploadRefused("the file is empty")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return name, size


def _check_line(text: bytes, line: int) -> None:
    if not text.strip():
        return
    try:
        value = _decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise UploadRefused(f"line {line} is not JSON: a batch file is JSONL, one request "
                            "object a line") from None
    if not isinstance(value, dict):
        raise UploadRefused(f"line {line} is not a JSON object")


def read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(COPY_BYTES):
            yield block
