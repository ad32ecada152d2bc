"""What every page needs: the signed-in session, the API as that user, rendering a template
whole or one live block of it, and the CSRF check of forms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from services.portal.api import ApiRefusal, PortalApi
from services.portal.progress import bar_percent, progress_of
from services.portal.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    csrf_ok,
    csrf_token,
    same_origin,
)
from shared.auth import SESSION_COOKIE

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _age(value: str | datetime | None) -> str:
    """'12 s ago', '3 min ago', ... for a timestamp of the API."""
    if not value:
        return ""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = max(0, (datetime.now(timezone.utc) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


TEMPLATES.env.filters["age"] = _age
TEMPLATES.env.globals.update(progress_of=progress_of, bar_percent=bar_percent)
# The shared pieces (state badges, bars, buttons, operation rows) as a global, so that a block
# rendered alone for a live region has them too.
TEMPLATES.env.globals["ui"] = TEMPLATES.env.get_template("macros.html").module


class SignInNeeded(Exception):
    """No session, or its token no longer works: the page sends the browser to /login."""


class Refused(Exception):
    """A page or form the user may not use; shown as an error page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Session:
    request: Request
    token: str
    api: PortalApi
    me: dict[str, Any]  # /v1/whoami: user, tenant, role

    @property
    def is_admin(self) -> bool:
        return self.me["role"] == "admin"

    @property
    def may_change(self) -> bool:
        return self.me["role"] in ("member", "admin")

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)

    def render(self, template: str, status: int = 200, block: str | None = None, **context: Any) -> HTMLResponse:
        """The whole page, or with ``block`` only that block (what a live region re-fetches)."""
        context = {"request": self.request, "me": self.me, "session": self, "csrf": self.csrf,
                   "csrf_field": CSRF_FIELD, "path": self.request.url.path, **context}
        page = TEMPLATES.get_template(template)
        if block is None:
            return HTMLResponse(page.render(context), status_code=status)
        return HTMLResponse("".join(page.blocks[block](page.new_context(context))), status_code=status)

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Refused(403, "This page is for the fleet's operators (an admin token).")


async def open_session(request: Request) -> Session:
    """The request's session; raises SignInNeeded. Pages use it as ``async with``."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInNeeded()
    api = PortalApi(request.app.state.api_app, token)
    try:
        me = await api.get("/v1/whoami")
    except ApiRefusal as exc:
        await api.__aexit__()
        if exc.status == 401:
            raise SignInNeeded() from None
        raise
    return Session(request, token, api, me)


async def checked_form(session: Session) -> dict[str, str]:
    """The posted form, once its CSRF token and origin are checked; raises Refused (403)."""
    request = session.request
    form = await request.form()
    presented = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise Refused(403, "This form was sent from another site; it was not carried out.")
    if not csrf_ok(session.token, presented if isinstance(presented, str) else None):
        raise Refused(403, "This form's security token is missing or stale; reload the page and try again.")
    return {key: value for key, value in form.items() if isinstance(value, str)}


def back_to(url: str) -> RedirectResponse:
    """After a form: the browser GETs ``url`` (POST, redirect, GET)."""
    return RedirectResponse(url, status_code=303)
