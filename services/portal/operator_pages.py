"""The operators' pages: hosts with their capacity and state, and the audit trail. The fleet's
operations are on the operations page, which shows an admin everything."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from services.portal.api import api_path
from services.portal.web import Refused, checked_form, open_session

router = APIRouter()
# What each button asks of the API: method and path under /v1/hosts/{id}.
HOST_ACTIONS = {
    "enable": ("POST", "enable"),
    "disable": ("POST", "disable"),
    "maintenance": ("POST", "maintenance"),
    "activate": ("DELETE", "maintenance"),
    "confirm-fenced": ("POST", "confirm-fenced"),
}


@router.get("/hosts", response_class=HTMLResponse)
async def host_list(request: Request, live: bool = False):
    session = await open_session(request)
    async with session.api as api:
        session.require_admin()
        hosts = await api.get("/v1/hosts")
        vms = await api.get("/v1/vms")
    by_host: dict[str, list[dict]] = {}
    for vm in vms:
        if vm.get("host_id"):
            by_host.setdefault(vm["host_id"], []).append(vm)
    return session.render("hosts.html", block="live" if live else None, hosts=hosts, vms_by_host=by_host)


@router.post("/hosts/{host_id}/{action}")
async def host_action(request: Request, host_id: str, action: str) -> Response:
    session = await open_session(request)
    async with session.api:
        form = await checked_form(session)
        if action not in HOST_ACTIONS:
            raise Refused(404, f"No action '{action}' for a host.")
        method, tail = HOST_ACTIONS[action]
        body = {"reason": form.get("reason", "")} if action == "disable" else None
        return await session.act(method, api_path("hosts", host_id, tail), "/hosts", json=body, done=action)


@router.get("/audit", response_class=HTMLResponse)
async def audit_trail(request: Request, offset: int = 0, live: bool = False):
    session = await open_session(request)
    async with session.api as api:
        records = await api.get("/v1/audit", offset=max(0, offset), limit=100)
    return session.render("audit.html", block="live" if live else None, records=records, offset=max(0, offset))
