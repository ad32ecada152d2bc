"""The portal as an ASGI app of its own, mounted by the API at ``/`` after the API's routes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import Scope

from services.portal import auth_pages, operator_pages, tenant_pages
from services.portal.api import ApiRefusal
from services.portal.session import CookiePolicy
from services.portal.web import TEMPLATES, Refused, SignInNeeded

HERE = Path(__file__).parent
# Installed from the npm registry by deploy/install.sh (services/portal/package.json).
VENDOR = {
    "htmx": HERE / "node_modules" / "htmx.org" / "dist",
    "xterm": HERE / "node_modules" / "@xterm" / "xterm",
    "xterm-fit": HERE / "node_modules" / "@xterm" / "addon-fit" / "lib",
    "swagger-ui": HERE / "node_modules" / "swagger-ui-dist",  # the API's /docs page
}


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "error.html", {"message": message, "back": "/vms"},
                                      status_code=status)


def create_portal(api_app: FastAPI, cookie_policy: CookiePolicy) -> FastAPI:
    portal = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    portal.state.api_app = api_app
    portal.state.cookie_policy = cookie_policy

    @portal.exception_handler(SignInNeeded)
    async def sign_in(request: Request, _exc: SignInNeeded) -> Response:
        if request.headers.get("hx-request"):  # a live region: the whole page goes to the sign-in
            return Response(status_code=204, headers={"HX-Redirect": "/login"})
        return RedirectResponse("/login", status_code=303)

    @portal.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> HTMLResponse:
        return _error_page(request, exc.status, exc.message)

    @portal.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error_page(request, exc.status_code, "There is no such page." if exc.status_code == 404 else
                           str(exc.detail))

    @portal.exception_handler(ApiRefusal)
    async def api_refused(request: Request, exc: ApiRefusal) -> HTMLResponse:
        return _error_page(request, exc.status, exc.message)

    for router in (auth_pages.router, tenant_pages.router, operator_pages.router):
        portal.include_router(router)
    portal.mount("/assets/vendor/htmx", StaticFiles(directory=VENDOR["htmx"], check_dir=False))
    portal.mount("/assets/vendor/xterm", StaticFiles(directory=VENDOR["xterm"], check_dir=False))
    portal.mount("/assets/vendor/xterm-fit", StaticFiles(directory=VENDOR["xterm-fit"], check_dir=False))
    portal.mount("/assets/vendor/swagger-ui", StaticFiles(directory=VENDOR["swagger-ui"], check_dir=False))
    portal.mount("/assets", StaticFiles(directory=HERE / "static"))
    return portal


class PortalMount(Mount):
    """The portal at ``/``: every path the API's routes do not take, except under ``/v1/``, which
    stays the API's (an unknown route there is the API's JSON 404, a wrong method its 405)."""

    def __init__(self, portal: FastAPI) -> None:
        super().__init__("", app=portal)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/v1/"):
            return Match.NONE, {}
        return super().matches(scope)
