"""The API's schema (``/openapi.json``) and its interactive page (``/docs``), for anyone with a
token or a portal session: like every route but the health checks, they need one. The page's
scripts are served by the portal's assets (Swagger UI from the npm registry, installed with
the rest), never fetched from elsewhere."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

router = APIRouter(include_in_schema=False)
SWAGGER_ASSETS = "/assets/vendor/swagger-ui"


@router.get("/openapi.json")
async def schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="vmflow API",
        swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-32x32.png",
    )
