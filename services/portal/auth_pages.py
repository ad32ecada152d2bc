"""Signing in with an API token (checked with /v1/whoami), and out."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from services.portal.api import ApiRefusal, PortalApi
from services.portal.session import same_origin
from services.portal.web import TEMPLATES, back_to
from shared.auth import SESSION_COOKIE

router = APIRouter()


def _login_page(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "login.html", {"error": error}, status_code=status)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request):
    return _login_page(request)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: str = Form("")):
    # A page of another site must not sign a visitor in under its own token.
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        return _login_page(request, "Sign-in from another site refused.", 403)
    token = token.strip()
    if not token:
        return _login_page(request, "Paste an API token (vmf_...).", 400)
    async with PortalApi(request.app.state.api_app, token) as api:
        try:
            me = await api.get("/v1/whoami")
            mine = await api.get(f"/v1/tokens/{me['token_id']}")
        except ApiRefusal as exc:
            return _login_page(request, exc.message, exc.status)
    expires_in_s = None
    if mine.get("expires_at"):
        expires_at = datetime.fromisoformat(mine["expires_at"])
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=timezone.utc)
        expires_in_s = (expires_at - datetime.now(timezone.utc)).total_seconds()
    response = back_to("/vms")
    policy = request.app.state.cookie_policy
    response.set_cookie(**policy.set_args(token, expires_in_s))
    return response


@router.post("/logout")
async def logout():
    response = back_to("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
