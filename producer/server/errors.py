"""Errors as OpenAI's API answers them: an HTTP status and `{"error": {...}}`."""

from __future__ import annotations

from typing import Any


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
