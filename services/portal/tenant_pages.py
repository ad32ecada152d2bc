"""The tenant's pages: VMs (list, create, one VM with its console), volumes, networks, quota,
and operations. Each change is a form that the API carries out as the signed-in user."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.portal.api import ApiRefusal, api_path
from services.portal.forms import field_errors, number, vm_request
from services.portal.web import Refused, Session, back_to, checked_form, open_session

router = APIRouter()
POWER_ACTIONS = ("start", "stop", "reboot")
VM_LIVE_OPERATIONS = 10  # a VM page shows its latest operations
OPERATIONS_PAGE = 50  # the operations page lists this many, then links the older ones


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/vms", status_code=303)


@router.get("/vms", response_class=HTMLResponse)
async def vm_list(request: Request, live: bool = False):
    session = await open_session(request)
    async with session.api as api:
        vms = await api.get("/v1/vms")
    return session.render("vms.html", block="live" if live else None, vms=vms)


async def _create_form(session: Session, form: dict[str, str] | None = None,
                       errors: dict[str, str] | None = None, general: list[str] | None = None,
                       status: int = 200, chosen_networks: list[str] | None = None) -> HTMLResponse:
    """The form, empty or as the user sent it (``chosen_networks``: a multiple choice, which
    ``form`` holds one value of) with the API's reasons."""
    api = session.api
    images, networks, groups = await asyncio.gather(
        api.get("/v1/images"), api.get("/v1/networks"), api.get("/v1/placement-groups"))
    defaults = {"vcpus": "1", "memory_mib": "128", "disk_gib": "1", "image": "lab-guest", "storage": "shared"}
    return session.render("vm_new.html", status=status, images=images, networks=networks, groups=groups,
                          form={**defaults, **(form or {})}, chosen_networks=chosen_networks or [],
                          errors=errors or {}, general=general or [])


@router.get("/vms/new", response_class=HTMLResponse)
async def vm_new(request: Request):
    session = await open_session(request)
    async with session.api:
        if not session.may_change:
            raise Refused(403, "A reader token may look, not create.")
        return await _create_form(session)


@router.post("/vms/new", response_class=HTMLResponse)
async def vm_create(request: Request):
    session = await open_session(request)
    async with session.api as api:
        form = await checked_form(session)
        networks = [n for n in (await request.form()).getlist("networks") if isinstance(n, str) and n]
        try:
            accepted = await api.call("POST", "/v1/vms", json=vm_request(form, networks))
        except ApiRefusal as exc:
            if exc.status not in (400, 409, 422):
                raise
            errors, general = field_errors(exc.problems)
            return await _create_form(session, form, errors, general, status=exc.status, chosen_networks=networks)
    return back_to(f"/vms/{accepted['vm']['id']}?done=create")


@router.get("/vms/{vm_id}", response_class=HTMLResponse)
async def vm_page(request: Request, vm_id: str, live: bool = False):
    session = await open_session(request)
    async with session.api as api:
        vm = await api.get(api_path("vms", vm_id))
        ops, volumes, snapshots = await asyncio.gather(
            api.get_or([], "/v1/operations", vm_id=vm_id, limit=VM_LIVE_OPERATIONS),
            api.get_or([], api_path("vms", vm_id, "volumes")),
            api.get_or([], api_path("vms", vm_id, "snapshots")))
        ops = await session.with_progress(ops)
        hosts = await api.get_or([], "/v1/hosts") if session.is_admin else []
    return session.render("vm.html", block="live" if live else None, vm=vm, ops=ops, volumes=volumes,
                          snapshots=snapshots, hosts=hosts)


@router.post("/vms/{vm_id}/{action}")
async def vm_action(request: Request, vm_id: str, action: str) -> Response:
    session = await open_session(request)
    async with session.api:
        form = await checked_form(session)
        page = f"/vms/{vm_id}"
        if action in POWER_ACTIONS:
            return await session.act("POST", api_path("vms", vm_id, action), page, done=action)
        if action == "delete":
            return await session.act("DELETE", api_path("vms", vm_id), "/vms", done="delete")
        if action == "migrate":
            return await session.act("POST", api_path("vms", vm_id, "migrate"), page, done="migrate",
                                     json={"target_host_id": form.get("target_host_id") or None})
        if action == "snapshot":
            return await session.act("POST", api_path("vms", vm_id, "snapshots"), page, done="snapshot",
                                     json={"name": form.get("name", "")})
        raise Refused(404, f"No action '{action}' for a VM.")


@router.post("/vms/{vm_id}/snapshots/{name}/{action}")
async def snapshot_action(request: Request, vm_id: str, name: str, action: str) -> Response:
    session = await open_session(request)
    async with session.api:
        await checked_form(session)
        if action == "revert":
            return await session.act("POST", api_path("vms", vm_id, "snapshots", name, "revert"), f"/vms/{vm_id}",
                                     done="revert")
        if action == "delete":
            return await session.act("DELETE", api_path("vms", vm_id, "snapshots", name), f"/vms/{vm_id}",
                                     done="delete")
        raise Refused(404, f"No action '{action}' for a snapshot.")


@router.get("/volumes", response_class=HTMLResponse)
async def volume_list(request: Request):
    session = await open_session(request)
    async with session.api as api:
        volumes = await api.get("/v1/volumes")
    return session.render("volumes.html", volumes=volumes)


@router.post("/volumes")
async def volume_create(request: Request) -> Response:
    session = await open_session(request)
    async with session.api:
        form = await checked_form(session)
        body = {"name": form.get("name", ""), "pool": form.get("pool") or "shared",
                "size_gib": number(form.get("size_gib", ""))}
        return await session.act("POST", "/v1/volumes", "/volumes", json=body, done="create")


@router.post("/volumes/{name}/delete")
async def volume_delete(request: Request, name: str) -> Response:
    session = await open_session(request)
    async with session.api:
        await checked_form(session)
        return await session.act("DELETE", api_path("volumes", name), "/volumes", done="delete")


@router.get("/networks", response_class=HTMLResponse)
async def network_list(request: Request):
    session = await open_session(request)
    async with session.api as api:
        networks = await api.get("/v1/networks")
    return session.render("networks.html", networks=networks)


@router.post("/networks")
async def network_create(request: Request) -> Response:
    session = await open_session(request)
    async with session.api:
        form = await checked_form(session)
        body = {"name": form.get("name", ""), "cidr": form.get("cidr", "")}
        return await session.act("POST", "/v1/networks", "/networks", json=body, done="create")


@router.post("/networks/{network_id}/delete")
async def network_delete(request: Request, network_id: str) -> Response:
    session = await open_session(request)
    async with session.api:
        await checked_form(session)
        return await session.act("DELETE", api_path("networks", network_id), "/networks", done="delete")


@router.get("/quota", response_class=HTMLResponse)
async def quota(request: Request, tenant: str = ""):
    session = await open_session(request)
    async with session.api as api:
        tenants = await api.get("/v1/tenants") if session.is_admin else []
        usage = await api.get(api_path("tenants", tenant if session.is_admin and tenant else session.me["tenant"],
                                       "quota"))
    return session.render("quota.html", usage=usage, tenants=tenants)


@router.get("/operations", response_class=HTMLResponse)
async def operation_list(request: Request, live: bool = False, vm_id: str = "", host_id: str = "",
                         kind: str = "", state: str = "", page: str = ""):
    """``page``: the token of an older page the API gave (``older →``)."""
    session = await open_session(request)
    filters = {"vm_id": vm_id, "host_id": host_id, "kind": kind, "state": state}
    async with session.api as api:
        try:
            ops, older = await api.get_page("/v1/operations", limit=OPERATIONS_PAGE, page_token=page, **filters)
            problem = ""
        except ApiRefusal as exc:
            if exc.status not in (400, 422):
                raise
            ops, older, problem = [], None, exc.message
        ops = await session.with_progress(ops)
    return session.render("operations.html", block="live" if live else None, ops=ops, filters=filters,
                          problem=problem, page=page, older=older)


@router.post("/operations/{op_id}/cancel")
async def operation_cancel(request: Request, op_id: str) -> Response:
    session = await open_session(request)
    async with session.api:
        await checked_form(session)
        return await session.act("POST", api_path("operations", op_id, "cancel"), "/operations", done="cancel")
