"""Every error leaves the API as JSON ``{"error": {"code", "message"}}`` with a fitting status;
anything unexpected as a 500 with code ``internal`` and the request's id, never a traceback."""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shared.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    VmflowError,
)

log = structlog.get_logger(__name__)
# The framework's own refusals (unknown route, wrong method, ...) in the platform's codes; the
# statuses no platform error has keep a code of their own.
_HTTP_CODES = {401: Unauthenticated.code, 403: Forbidden.code, 404: NotFound.code, 409: Conflict.code,
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


def error_body(code: str, message: str, details: list | None = None) -> dict:
    error: dict = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def _describe(err: dict) -> str:
    field = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    message = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VmflowError)
    async def platform_error(_req: Request, exc: VmflowError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_describe(e) for e in exc.errors()]
        return JSONResponse(
            error_body(InvalidRequest.code, "; ".join(problems), problems), status_code=422
        )

    @app.exception_handler(HTTPException)
    async def http_error(_req: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "")
        log.error("unexpected error", request_id=request_id, path=request.url.path, error_type=type(exc).__name__,
                  exc_info=exc)
        message = f"an unexpected error; the logs say more under request id {request_id}"
        return JSONResponse({"error": {"code": VmflowError.code, "message": message, "request_id": request_id}},
                            status_code=500, headers={"X-Request-Id": request_id})
