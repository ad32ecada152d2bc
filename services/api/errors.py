"""Every error leaves the API as JSON ``{"error": {"code", "message"}}`` with a fitting status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shared.errors import VmflowError


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
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_describe(e) for e in exc.errors()]
        return JSONResponse(
            error_body("invalid_request", "; ".join(problems), problems), status_code=422
        )

    @app.exception_handler(HTTPException)
    async def http_error(_req: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)
