"""Errors as OpenAI's API answers them: an HTTP status and `{"error": {...}}`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

from schemas.errors import NightshiftError, first_line


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def not_found(what: str, given: str, param: str | None = None) -> ApiError:
    """Another key's object is not found either: its existence is not told."""
    return ApiError(404, f"No such {what}: {given!r}", param=param, code="not_found")


def no_key() -> ApiError:
    return ApiError(401, "Incorrect API key provided: create one with `nightshift keys "
                         "create NAME`", code="invalid_api_key")


def refused(exc: NightshiftError | OperationalError) -> ApiError:
    """What the CLI would say in one line: 503 for an unreachable database or broker (its
    exit code 3: retry later), 400 for anything to fix in the request."""
    if isinstance(exc, OperationalError):  # the database went away under a request
        return ApiError(503, f"database: {first_line(exc)}", kind="server_error")
    unreachable = exc.exit_code == 3
    return ApiError(503 if unreachable else 400, str(exc),
                    kind="server_error" if unreachable else "invalid_request_error")
