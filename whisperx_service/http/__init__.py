"""The gateway's HTTP layer: one router per API family, one envelope, errors mapped once.

`build_app` makes the FastAPI app the gateway mounts; every error a route raises leaves through
the handlers here as OpenAI's envelope with the request id (BentoML's own routes are wrapped by
the guard, `whisperx_service.guard`).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ServiceError, from_http_exception, from_validation_error, internal_error
from . import jobs, language, openai, page, transcribe, voices
from .envelope import REQUEST_ID_HEADER, request_id_of

logger = logging.getLogger("whisperx_service.gateway")


def error_response(request: Request, error: ServiceError) -> JSONResponse:
    request_id = request_id_of(request)
    return JSONResponse(error.to_body(request_id), status_code=error.status_code,
                        headers={**error.headers(), REQUEST_ID_HEADER: request_id})


def build_app() -> FastAPI:
    app = FastAPI(
        title="Offline WhisperX",
        description="Transcripts with word-level timestamps and speaker labels, served offline.",
        # FastAPI's own docs pages load their scripts from a CDN: `page` serves /docs from local files.
        docs_url=None, redoc_url=None,
    )
    for family in (transcribe, openai, voices, language, jobs, page):
        app.include_router(family.router)
    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Every error of `app` leaves as OpenAI's envelope with the request id."""

    @app.exception_handler(ServiceError)
    async def _ours(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, from_http_exception(exc.status_code, exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, from_validation_error(list(exc.errors())))

    @app.exception_handler(Exception)
    async def _unforeseen(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled %s", type(exc).__name__)
        return error_response(request, internal_error())
