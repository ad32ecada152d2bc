"""What every page needs: the signed-in session, the API as that user, rendering a template
whole or one live block of it, and the CSRF check of forms."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.portal.api import ApiRefusal, PortalApi, api_path
from services.portal.progress import bar_percent, progress_of
from services.portal.session import CSRF_FIELD, CSRF_HEADER, csrf_ok, csrf_token
from shared.auth import SESSION_COOKIE, same_origin

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


# What a page says after a change it asked for (?done=<key>): fixed words, never the URL's text.
NOTICES = {
    "start": "Start requested; its progress is below.",
    "stop": "Stop requested; its progress is below.",
    "reboot": "Reboot requested; its progress is below.",
    "delete": "Deletion requested.",
    "migrate": "Migration started; its progress is below.",
    "snapshot": "Snapshot requested.",
    "revert": "Revert requested.",
    "create": "Creation requested.",
    "cancel": "Cancellation requested.",
    "maintenance": "Maintenance started: the host's VMs are leaving.",
    "activate": "The host is back in service.",
    "enable": "The host takes new VMs again.",
    "disable": "The host takes no new VMs.",
    "confirm-fenced": "Confirmed off: its HA VMs restart elsewhere.",
}
RUNNING_DETAILS_MAX = 10  # running operations whose live progress a page asks for, per refresh
# Ended ones whose error a page asks for: the API's list carries no error, only an operation's
# own view does, and without it a failed row could only say "failed".
UNSUCCESSFUL_DETAILS_MAX = 10
UNSUCCESSFUL_STATES = ("failed", "cancelled")  # the states whose view carries an error


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
                   "csrf_field": CSRF_FIELD, "path": self.request.url.path,
                   "notice": NOTICES.get(self.request.query_params.get("done", "")), **context}
        page = TEMPLATES.get_template(template)
        if block is None:
            return HTMLResponse(page.render(context), status_code=status)
        return HTMLResponse("".join(page.blocks[block](page.new_context(context))), status_code=status)

    async def act(self, method: str, path: str, back: str, *, done: str, json: dict | None = None) -> Response:
        """Carry out one change and go back to ``back``; the API's refusal is shown with its own
        status and reason."""
        try:
            await self.api.call(method, path, json=json)
        except ApiRefusal as exc:
            return self.render("error.html", status=exc.status, message=exc.message, back=back)
        return back_to(f"{back}?done={done}")

    async def with_progress(self, operations: list[dict]) -> list[dict]:
        """The operations, the first few running ones with their step and progress and the first
        few failed or cancelled ones with their error."""
        running = [op for op in operations if op.get("state") == "running"][:RUNNING_DETAILS_MAX]
        unsuccessful = [op for op in operations
                        if op.get("state") in UNSUCCESSFUL_STATES][:UNSUCCESSFUL_DETAILS_MAX]
        wanted = running + unsuccessful
        details = await asyncio.gather(*(self.api.get_or(op, api_path("operations", op["id"])) for op in wanted))
        by_id = {detail["id"]: {**op, **detail} for op, detail in zip(wanted, details)}
        return [by_id.get(op["id"], op) for op in operations]

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Refused(403, "This page is for the fleet's operators (an admin token).")


async def open_session(request: Request) -> Session:
    """The request's session; raises SignInNeeded. Pages use it as ``async with``."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or not token.isascii():
        raise SignInNeeded()
    api = PortalApi(request.app.state.api_app, token)
    try:
        me = await api.get("/v1/whoami")
    except BaseException as exc:
        await api.__aexit__()
        if isinstance(exc, ApiRefusal) and exc.status == 401:
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
