"""Signing in with an API token, and out.

The pasted token is used once: it makes a session token of its own role, tenant and user that
expires with the session (at most ``portal_session_s``, never after the pasted one), and that
one goes into the cookie. Signing out revokes it, so a copied cookie dies with the session.
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from services.portal.api import ApiRefusal, PortalApi, api_path
from services.portal.web import TEMPLATES, back_to
from shared.auth import SESSION_COOKIE, same_origin

router = APIRouter()


def _login_page(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "login.html", {"error": error}, status_code=status)


def _seconds_left(expires_at: str | None) -> float | None:
    if not expires_at:
        return None
    when = datetime.fromisoformat(expires_at)
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return (when - datetime.now(timezone.utc)).total_seconds()


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request):
    return _login_page(request)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: str = Form("")):
    # A page of another site must not sign a visitor in under its own token.
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        return _login_page(request, "Sign-in from another site refused.", 403)
    token = token.strip()
    if not token or not token.isascii():
        return _login_page(request, "Paste an API token (vmf_ followed by letters and digits).", 400)
    lifetime_s = request.app.state.cookie_policy.max_age_s
    async with PortalApi(request.app.state.api_app, token) as api:
        try:
            me = await api.get("/v1/whoami")
            pasted_left_s = _seconds_left((await api.get(api_path("tokens", me["token_id"])))["expires_at"])
            if pasted_left_s is not None:
                lifetime_s = min(lifetime_s, int(pasted_left_s))
            if lifetime_s < 60:
                return _login_page(request, "This token expires within a minute; make a new one.", 400)
            session = await api.call("POST", "/v1/tokens", json={
                "role": me["role"], "expires_in_s": lifetime_s, "description": "portal session"})
        except ApiRefusal as exc:
            return _login_page(request, exc.message, exc.status)
    response = back_to("/vms")
    response.set_cookie(**request.app.state.cookie_policy.set_args(session["token"], lifetime_s))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Revokes the session's token (a cross-site POST carries no SameSite=Strict cookie, so there
    is nothing to forge here)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token and token.isascii():
        async with PortalApi(request.app.state.api_app, token) as api:
            try:
                me = await api.get("/v1/whoami")
                await api.call("DELETE", api_path("tokens", me["token_id"]))
            except ApiRefusal:
                pass  # expired or revoked already
    response = back_to("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
