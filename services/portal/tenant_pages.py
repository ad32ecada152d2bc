"""The tenant's pages: VMs (list, create, one VM with its console), volumes, networks, quota,
and operations. Each change is a form that the API carries out as the signed-in user."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from services.portal.api import ApiRefusal
from services.portal.forms import field_errors, vm_request
from services.portal.web import Refused, Session, back_to, checked_form, open_session

router = APIRouter()
POWER_ACTIONS = ("start", "stop", "reboot")


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
                       status: int = 200) -> HTMLResponse:
    api = session.api
    images, networks, groups = await asyncio.gather(
        api.get("/v1/images"), api.get("/v1/networks"), api.get("/v1/placement-groups"))
    defaults = {"vcpus": "1", "memory_mib": "128", "disk_gib": "1", "image": "lab-guest", "storage": "shared"}
    return session.render("vm_new.html", status=status, images=images, networks=networks, groups=groups,
                          form={**defaults, **(form or {})}, errors=errors or {}, general=general or [])


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
        networks = (await request.form()).getlist("networks")
        try:
            accepted = await api.call("POST", "/v1/vms", json=vm_request(form, [n for n in networks if n]))
        except ApiRefusal as exc:
            if exc.status not in (400, 409, 422):
                raise
            errors, general = field_errors(exc.problems)
            return await _create_form(session, form, errors, general, status=exc.status)
    return back_to(f"/vms/{accepted['vm']['id']}")


@router.get("/vms/{vm_id}", response_class=HTMLResponse)
async def vm_page(request: Request, vm_id: str, live: bool = False):
    session = await open_session(request)
    async with session.api as api:
        vm = await api.get(f"/v1/vms/{quote(vm_id)}")
        ops, volumes, snapshots = await asyncio.gather(
            api.get_or([], "/v1/operations", vm_id=vm_id, limit=10),
            api.get_or([], f"/v1/vms/{quote(vm_id)}/volumes"),
            api.get_or([], f"/v1/vms/{quote(vm_id)}/snapshots"))
        running = [op for op in ops if op.get("state") == "running"]
        details = await asyncio.gather(*(api.get_or(op, f"/v1/operations/{op['id']}") for op in running))
        by_id = {d["id"]: {**op, **d} for op, d in zip(running, details)}
        ops = [by_id.get(op["id"], op) for op in ops]
        hosts = await api.get_or([], "/v1/hosts") if session.is_admin else []
    return session.render("vm.html", block="live" if live else None, vm=vm, ops=ops, volumes=volumes,
                          snapshots=snapshots, hosts=hosts, notice=request.query_params.get("notice"))


async def _act(session: Session, method: str, path: str, back: str, json: dict | None = None,
               notice: str = "") -> RedirectResponse | HTMLResponse:
    """Carry out one change; the API's refusal is shown with its own status and reason."""
    try:
        await session.api.call(method, path, json=json)
    except ApiRefusal as exc:
        return session.render("error.html", status=exc.status, message=exc.message, back=back)
    return back_to(f"{back}?notice={quote(notice)}" if notice else back)


@router.post("/vms/{vm_id}/{action}")
async def vm_action(request: Request, vm_id: str, action: str):
    session = await open_session(request)
    async with session.api:
        form = await checked_form(session)
        vm_path = f"/v1/vms/{quote(vm_id)}"
        if action in POWER_ACTIONS:
            return await _act(session, "POST", f"{vm_path}/{action}", f"/vms/{vm_id}", notice=f"{action} requested")
        if action == "delete":
            return await _act(session, "DELETE", vm_path, "/vms", notice="delete requested")
        if action == "migrate":
            target = form.get("target_host_id") or None
            return await _act(session, "POST", f"{vm_path}/migrate", f"/vms/{vm_id}",
                              json={"target_host_id": target}, notice="migration started")
        if action == "snapshot":
            return await _act(session, "POST", f"{vm_path}/snapshots", f"/vms/{vm_id}",
                              json={"name": form.get("name", "")}, notice="snapshot requested")
        raise Refused(404, f"No action '{action}' for a VM.")


@router.post("/vms/{vm_id}/snapshots/{name}/{action}")
async def snapshot_action(request: Request, vm_id: str, name: str, action: str):
    session = await open_session(request)
    async with session.api:
        await checked_form(session)
        path = f"/v1/vms/{quote(vm_id)}/snapshots/{quote(name)}"
        if action == "revert":
            return await _act(session, "POST", f"{path}/revert", f"/vms/{vm_id}", notice=f"reverting to {name}")
        if action == "delete":
            return await _act(session, "DELETE", path, f"/vms/{vm_id}", notice=f"deleting {name}")
        raise Refused(404, f"No action '{action}' for a snapshot.")


@router.get("/volumes", response_class=HTMLResponse)
async def volume_list(request: Request):
    session = await open_session(request)
    async with session.api as api:
        volumes = await api.get("/v1/volumes")
    return session.render("volumes.html", volumes=volumes, notice=request.query_params.get("notice"))


@router.post("/volumes")
async def volume_create(request: Request):
    session = await open_session(request)
    async with session.api:
        form = await checked_form(session)
        size = form.get("size_gib", "")
        body = {"name": form.get("name", ""), "pool": form.get("pool") or "shared",
                "size_gib": int(size) if size.isdigit() else size}
        return await _act(session, "POST", "/v1/volumes", "/volumes", json=body, notice="volume requested")


@router.post("/volumes/{name}/delete")
async def volume_delete(request: Request, name: str):
    session = await open_session(request)
    async with session.api:
        await checked_form(session)
        return await _act(session, "DELETE", f"/v1/volumes/{quote(name)}", "/volumes", notice=f"deleting {name}")


@router.get("/networks", response_class=HTMLResponse)
async def network_list(request: Request):
    session = await open_session(request)
    async with session.api as api:
        networks = await api.get("/v1/networks")
    return session.render("networks.html", networks=networks, notice=request.query_params.get("notice"))


@router.post("/networks")
async def network_create(request: Request):
    session = await open_session(request)
    async with session.api:
        form = await checked_form(session)
        body = {"name": form.get("name", ""), "cidr": form.get("cidr", "")}
        return await _act(session, "POST", "/v1/networks", "/networks", json=body, notice="network requested")


@router.post("/networks/{network_id}/delete")
async def network_delete(request: Request, network_id: str):
    session = await open_session(request)
    async with session.api:
        await checked_form(session)
        return await _act(session, "DELETE", f"/v1/networks/{quote(network_id)}", "/networks",
                          notice="network deletion requested")


@router.get("/quota", response_class=HTMLResponse)
async def quota(request: Request):
    session = await open_session(request)
    async with session.api as api:
        tenant = request.query_params.get("tenant") if session.is_admin else None
        tenants = await api.get("/v1/tenants") if session.is_admin else []
        usage = await api.get(f"/v1/tenants/{quote(tenant or session.me['tenant'])}/quota")
    return session.render("quota.html", usage=usage, tenants=tenants)


@router.get("/operations", response_class=HTMLResponse)
async def operation_list(request: Request, live: bool = False, vm_id: str = "", host_id: str = "",
                         kind: str = "", state: str = ""):
    session = await open_session(request)
    filters = {"vm_id": vm_id, "host_id": host_id, "kind": kind, "state": state}
    async with session.api as api:
        try:
            ops = await api.get("/v1/operations", limit=100, **filters)
            problem = ""
        except ApiRefusal as exc:
            if exc.status not in (400, 422):
                raise
            ops, problem = [], exc.message
        running = [op for op in ops if op.get("state") == "running"]
        details = await asyncio.gather(*(api.get_or(op, f"/v1/operations/{op['id']}") for op in running))
        by_id = {d["id"]: {**op, **d} for op, d in zip(running, details)}
        ops = [by_id.get(op["id"], op) for op in ops]
    return session.render("operations.html", block="live" if live else None, ops=ops, filters=filters,
                          problem=problem, notice=request.query_params.get("notice"))


@router.post("/operations/{op_id}/cancel")
async def operation_cancel(request: Request, op_id: str):
    session = await open_session(request)
    async with session.api:
        await checked_form(session)
        return await _act(session, "POST", f"/v1/operations/{quote(op_id)}/cancel", "/operations",
                          notice=f"cancel requested for {op_id}")
