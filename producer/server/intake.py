"""What a request must pass before any route reads its body: an API route's bearer key,
and a size limit. FastAPI reads a form or a JSON body whole (to disk or memory) before it
runs a route's dependencies, so without this a caller with no key, or with too much, would
cost the server that body first."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.server import keys
from producer.server.errors import ApiError, no_key, refused
from schemas.errors import NightshiftError
from schemas.settings import Settings

UPLOADS = "/v1/files"
# A multipart upload's parts and headers around the file itself.
FORM_ROOM = 1 << 20
# Any other body: a batch to create, a dashboard form.
BODY_LIMIT = 1 << 20


def bearer(db_url: str, authorization: str | None) -> keys.Caller | None:
    """The live key an `Authorization: Bearer KEY` header carries."""
    scheme, _, key = (authorization or "").partition(" ")
    return keys.authenticate(db_url, key.strip()) if scheme.lower() == "bearer" else None


class Intake:
    """ASGI middleware: an API request with a body is authenticated first (the route's
    `caller` takes the key found here), and every body is counted as it arrives, refused
    with 413 once over its limit: the declared length at once, a chunked one when it
    crosses it."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        if path.startswith("/v1/"):
            try:
                found = await run_in_threadpool(bearer, self.settings.database_url,
                                                headers.get("authorization"))
            except (NightshiftError, OperationalError) as exc:  # outside the app's handlers
                await _answer(scope, receive, send, refused(exc))
                return
            if found is None:
                await _answer(scope, receive, send, no_key())
                return
            scope.setdefault("state", {})["caller"] = found
        limit = self.settings.max_file_bytes + FORM_ROOM if path == UPLOADS else BODY_LIMIT
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _answer(scope, receive, send, _too_large(limit))
            return
        await self.app(scope, _counted(receive, limit), send)


def _counted(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:  # FastAPI passes an HTTPException from reading the body on
                raise HTTPException(413, _too_large(limit).message)
        return message

    return counted


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over this server's limit of {limit:,} bytes")


async def _answer(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
