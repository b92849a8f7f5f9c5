"""The HTTP side of `nightshift serve`: OpenAI's Files and Batches endpoints and its model
list, each behind a bearer key, and the dashboard's pages (producer.server.pages). The
handlers are plain functions (FastAPI runs them in its thread pool): each reads or writes
SQL and the files directory, nothing else."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from producer.server import batches, intake, keys, pages, storage
from producer.server.errors import ApiError, no_key, not_found, refused
from schemas import db
from schemas.errors import NightshiftError
from schemas.settings import Settings
from schemas.tables import StoredFile


def caller(request: Request, authorization: Annotated[str | None, Header()] = None
           ) -> keys.Caller:
    """The live key a request carries (`Authorization: Bearer KEY`), or a 401; a request
    with a body had it checked before its body was read (producer.server.intake)."""
    found = getattr(request.state, "caller", None) or intake.bearer(
        request.app.state.settings.database_url, authorization)
    if found is None:
        raise no_key()
    return found


Caller = Annotated[keys.Caller, Depends(caller)]


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="nightshift", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.add_middleware(intake.Intake, settings=settings)
    url = settings.database_url

    @app.exception_handler(ApiError)
    def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(NightshiftError)
    @app.exception_handler(OperationalError)
    def _refused(_: Request, exc: NightshiftError | OperationalError) -> JSONResponse:
        error = refused(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = str(first["loc"][-1]) if first.get("loc") else None
        message = (f"Missing required parameter: {param!r}" if first["type"] == "missing"
                   else f"{param}: {first['msg']}")
        return JSONResponse(ApiError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(),
                            status_code=exc.status_code)

    @app.post("/v1/files")
    def upload(who: Caller, file: Annotated[UploadFile, File()],
               purpose: Annotated[str, Form()]) -> dict[str, Any]:
        if purpose != "batch":
            raise ApiError(400, f"purpose {purpose!r} is not supported: nightshift keeps "
                                "batch input files (purpose 'batch')", param="purpose")
        file_id = storage.new_id()
        try:
            name, size = storage.save(settings, file_id, file.file)
        except storage.UploadRefused as exc:
            raise ApiError(413 if exc.too_large else 400, f"{file.filename}: {exc}",
                           param="file") from None
        stored = StoredFile(id=file_id, owner=who.key_id, purpose=purpose,
                            filename=file.filename or "upload.jsonl", bytes=size, name=name)
        with db.session(url) as session, session.begin():
            session.add(stored)
        return _file(stored)

    @app.get("/v1/files")
    def list_files(who: Caller, purpose: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
                   after: str | None = None) -> dict[str, Any]:
        query = select(StoredFile).order_by(StoredFile.created_at.desc(), StoredFile.id.desc())
        if not who.admin:
            query = query.where(StoredFile.owner == who.key_id)
        if purpose:
            query = query.where(StoredFile.purpose == purpose)
        with db.reader(url) as session:
            if after:
                mark = _stored(session, who, after)
                query = query.where(
                    (StoredFile.created_at < mark.created_at)
                    | ((StoredFile.created_at == mark.created_at) & (StoredFile.id < mark.id)))
            rows = session.scalars(query.limit(limit + 1)).all()
        data = [_file(f) for f in rows[:limit]]
        return {"object": "list", "data": data, "has_more": len(rows) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    @app.get("/v1/files/{file_id}")
    def get_file(who: Caller, file_id: str) -> dict[str, Any]:
        produced = batches.output_file(settings, who, file_id)
        if produced is not None:
            batch, which = produced
            return {"id": file_id, "object": "file", "purpose": "batch_output",
                    "filename": f"{batch.id}_{'output' if which == batches.OUTPUT else 'error'}"
                                ".jsonl",
                    "bytes": batches.file_size(settings, batch, which),
                    "created_at": int(batch.created_at.timestamp()), "status": "processed",
                    "status_details": None}
        with db.reader(url) as session:
            return _file(_stored(session, who, file_id))

    @app.get("/v1/files/{file_id}/content")
    def content(who: Caller, file_id: str) -> StreamingResponse:
        produced = batches.output_file(settings, who, file_id)
        if produced is not None:
            return StreamingResponse(batches.blocks(settings, *produced),
                                     media_type="application/jsonl")
        with db.reader(url) as session:
            stored = _stored(session, who, file_id)
        return StreamingResponse(storage.read(storage.path_of(settings, stored.name)),
                                 media_type="application/jsonl")

    @app.delete("/v1/files/{file_id}")
    def delete_file(who: Caller, file_id: str) -> dict[str, Any]:
        with db.session(url) as session, session.begin():
            stored = _stored(session, who, file_id)
            session.delete(stored)
        storage.path_of(settings, stored.name).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.post("/v1/batches")
    def create_batch(who: Caller, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return batches.create(settings, who, body)

    @app.get("/v1/batches")
    def list_batches(who: Caller, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
        return batches.listed(settings, who, after=after, limit=limit)

    @app.get("/v1/batches/{batch_id}")
    def get_batch(who: Caller, batch_id: str) -> dict[str, Any]:
        return batches.shape(settings, batches.get(settings, who, batch_id))

    @app.post("/v1/batches/{batch_id}/cancel")
    def cancel_batch(who: Caller, batch_id: str) -> dict[str, Any]:
        return batches.cancel(settings, who, batch_id)

    @app.get("/v1/models")
    def models(who: Caller) -> dict[str, Any]:
        from worker import presence

        with db.reader(url) as session:
            live = sorted(presence.live_models(session))
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                            "owned_by": "nightshift"} for m in live]}

    pages.mount(app, settings)
    return app


def _stored(session: Any, who: keys.Caller, file_id: str) -> StoredFile:
    stored = session.get(StoredFile, file_id)
    if stored is None or not who.owns(stored.owner):
        raise not_found("file", file_id)
    return stored


def _file(stored: StoredFile) -> dict[str, Any]:
    return {"id": stored.id, "object": "file", "bytes": stored.bytes,
            "created_at": int(stored.created_at.timestamp()), "filename": stored.filename,
            "purpose": stored.purpose, "status": "processed", "status_details": None}
