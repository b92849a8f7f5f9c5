"""Errors for people who run nightshift: each message says what to fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class NightshiftError(Exception):
    """Base of every error the CLI reports as one line and a non-zero exit."""

    exit_code = 1


class ConfigError(NightshiftError):
    exit_code = 2


class InputError(NightshiftError):
    """The input file (or a row of it) cannot become a job."""

    exit_code = 2


class UnreadableDocument(InputError):
    """One document gives no text (encrypted, empty, scanned, damaged): it is skipped."""


class DatabaseUnreachable(NightshiftError):
    exit_code = 3


class SchemaOutdated(NightshiftError):
    """The database has no nightshift tables, or an older version of them, than this
    nightshift reads: `nightshift db upgrade` brings them up to date."""

    exit_code = 3


class BrokerUnreachable(NightshiftError):
    exit_code = 3


class JobNotFound(NightshiftError):
    exit_code = 4


class AmbiguousJob(NightshiftError):
    """A JOB argument that names no one job: shorter than a prefix may be, or the start of
    several jobs' ids."""

    exit_code = 2


class NotRetryable(NightshiftError):
    """`nightshift retry` of a job still running, or of a Batch API batch, whose end is
    final."""

    exit_code = 2


class ModelError(NightshiftError):
    """The model cannot be found or loaded."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An error's first line: the driver's own error where a library wrapped one."""
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines()
            or [type(exc).__name__])[0]


def reason(exc: ValidationError | ValueError) -> str:
    """A validation failure as one line a person can act on."""
    from pydantic import ValidationError  # imported by whoever raised one: no cost here

    if not isinstance(exc, ValidationError):
        return str(exc)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"
