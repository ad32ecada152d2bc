"""/v1/volumes: every volume of every pool (VM root disks included), data volumes made empty or
cloned from an image, resized (grow only), attached to and detached from VMs, deleted.

A volume still naming a VM that no longer exists as its owner is free: the routes pass that
stale owner on, and the storage service lets exactly that one be replaced.

A data volume belongs to the tenant whose quota holds it; a root disk to its VM's tenant. Other
tenants do not see it (404).
"""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Depends, Response

from services.api.models import Vm
from services.api.ownership import visible_image, visible_volume, volume_tenants
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from services.api.storage_models import (
    StorageOperationAccepted,
    VolumeAttach,
    VolumeCreate,
    VolumePublic,
    VolumeResize,
    get_vm,
    require_state,
    start_operation,
)
from shared.auth import Principal
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.models import VmState
from shared.names import volume_operation_id
from shared.quota import Amounts, QuotaSettlement, volume_growth_hold, volume_hold
from shared.storage_models import (
    AttachmentInput,
    CreateVolumeInput,
    DeleteVolumeInput,
    ResizeVolumeInput,
    VolumeCreateRequest,
    VolumeDeleteRequest,
    VolumeKind,
    VolumeResizeRequest,
    VolumeView,
)

router = APIRouter(prefix="/v1", tags=["storage"])
_ATTACHABLE = (VmState.RUNNING, VmState.STOPPED)


async def _owner(p: Platform, volume: VolumeView) -> Vm | None:
    """The VM the volume is attached to, None if none or if that VM no longer exists."""
    if volume.vm_id is None:
        return None
    try:
        return await asyncio.to_thread(p.inventory.get, volume.vm_id)
    except NotFound:
        return None


async def _data_volume(p: Platform, who: Principal, name: str, action: str) -> tuple[VolumeView, str]:
    """The data volume and its tenant (the caller's when nobody claims it: an admin's own)."""
    volume, tenant = await visible_volume(p, who, name)
    if volume.kind is VolumeKind.ROOT:
        raise Conflict(f"cannot {action} '{name}': it is the root disk of VM {volume.vm_id}")
    return volume, tenant or who.tenant


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


@router.get("/volumes", response_model=list[VolumePublic])
async def list_volumes(p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    volumes = list((await p.storage.volumes()).volumes)
    if who.is_admin:
        return [VolumePublic.of(v) for v in volumes]
    owners = await volume_tenants(p, volumes)
    return [VolumePublic.of(v) for v in volumes if owners.get(v.name) == who.tenant]


@router.get("/volumes/{name}", response_model=VolumePublic)
async def get_volume(name: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    return VolumePublic.of((await visible_volume(p, who, name))[0])


@router.post("/volumes", status_code=202, response_model=StorageOperationAccepted)
async def create_volume(body: VolumeCreate, response: Response, p: Platform = Depends(get_platform),
                        who: Principal = Depends(principal)):
    """An empty data volume, or a thin or full clone of an image (``image``, ``clone``). Its
    size counts against the tenant's disk quota from now on."""
    req = VolumeCreateRequest(body.name, body.pool, body.size_gib, body.image, body.clone)
    try:
        if body.image is not None:  # a clone of an image the caller may not see would copy its data
            await visible_image(p, who, body.image)
        await p.storage.check_volume(req)
    except NotFound as exc:  # an unknown image named in the body
        raise InvalidRequest(f"image: {exc.message}") from None
    hold = volume_hold(body.name)
    await asyncio.to_thread(p.ledger.reserve, who.tenant, hold, Amounts(volumes=1, disk_gib=body.size_gib))
    quota = QuotaSettlement(commit_on_success=(hold,), release_on_failure=(hold,))
    return await start_operation(p, "CreateVolume", CreateVolumeInput(who.tenant, req, quota),
                                 volume_operation_id(body.name, "create"), f"volume/{body.name}", response,
                                 who.tenant, reserved=hold, who=who)


@router.post("/volumes/{name}/resize", status_code=202, response_model=StorageOperationAccepted)
async def resize_volume(name: str, body: VolumeResize, response: Response, p: Platform = Depends(get_platform),
                        who: Principal = Depends(principal)):
    """Grow a data volume; shrinking is refused (422). A volume attached to a VM that is not
    stopped cannot be resized (409). The growth counts against the disk quota."""
    volume, tenant = await _data_volume(p, who, name, "resize")
    if body.size_gib < volume.size_gib:
        raise InvalidRequest(f"size_gib: volumes only grow; '{name}' has {volume.size_gib:g} GiB")
    owner = await _owner(p, volume)
    if owner is not None:
        require_state(owner, (VmState.STOPPED,), f"resize volume '{name}' attached to")
    suffix = _suffix()
    growth = volume_growth_hold(name)  # one at a time: a second resize meanwhile is a Conflict
    try:
        await asyncio.to_thread(p.ledger.reserve, tenant, growth,
                                Amounts(disk_gib=max(0, body.size_gib - int(volume.size_gib))), volume_hold(name))
    except Conflict:
        raise Conflict(f"volume '{name}' is being resized already") from None
    quota = QuotaSettlement(commit_on_success=(growth,), release_on_failure=(growth,))
    req = ResizeVolumeInput(tenant, VolumeResizeRequest(name, body.size_gib), quota)
    return await start_operation(p, "ResizeVolume", req, volume_operation_id(name, "resize", suffix),
                                 f"volume/{name}", response, tenant, reserved=growth, who=who)


@router.delete("/volumes/{name}", status_code=202, response_model=StorageOperationAccepted)
async def delete_volume(name: str, response: Response, p: Platform = Depends(get_platform),
                        who: Principal = Depends(principal)):
    """Delete a data volume; 409 while it is attached to a VM. Its quota is free once it is gone."""
    volume, tenant = await _data_volume(p, who, name, "delete")
    owner = await _owner(p, volume)
    if owner is not None:
        raise Conflict(f"volume '{name}' is attached to VM '{owner.name}' ({owner.id}); detach it first")
    req = VolumeDeleteRequest(name, stale_attachment=volume.vm_id)
    quota = QuotaSettlement(release_on_success=(volume_hold(name),))
    return await start_operation(p, "DeleteVolume", DeleteVolumeInput(tenant, req, quota),
                                 volume_operation_id(name, "delete"), f"volume/{name}", response, tenant, who=who)


@router.post("/volumes/{name}/attach", status_code=202, response_model=StorageOperationAccepted)
async def attach_volume(name: str, body: VolumeAttach, response: Response, p: Platform = Depends(get_platform),
                        who: Principal = Depends(principal)):
    return await _attach(p, who, body.vm_id, name, response)


@router.post("/volumes/{name}/detach", status_code=202, response_model=StorageOperationAccepted)
async def detach_volume(name: str, response: Response, p: Platform = Depends(get_platform),
                        who: Principal = Depends(principal)):
    return await _detach(p, who, name, None, response)


@router.get("/vms/{vm_id}/volumes", response_model=list[VolumePublic])
async def list_vm_volumes(vm_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """The VM's root disk and the data volumes attached to it."""
    vm = await get_vm(p, vm_id, who)
    return [VolumePublic.of(v) for v in (await p.storage.volumes()).volumes if v.vm_id == vm.id]


@router.post("/vms/{vm_id}/volumes/{name}", status_code=202, response_model=StorageOperationAccepted)
async def attach_to_vm(vm_id: str, name: str, response: Response, p: Platform = Depends(get_platform),
                       who: Principal = Depends(principal)):
    """Attach a data volume: hot-plugged into a running VM (and kept in its definition), or
    added to a stopped VM's definition."""
    return await _attach(p, who, vm_id, name, response)


@router.delete("/vms/{vm_id}/volumes/{name}", status_code=202, response_model=StorageOperationAccepted)
async def detach_from_vm(vm_id: str, name: str, response: Response, p: Platform = Depends(get_platform),
                         who: Principal = Depends(principal)):
    return await _detach(p, who, name, vm_id, response)


async def _attach(p: Platform, who: Principal, vm_id: str, name: str, response: Response) -> StorageOperationAccepted:
    vm = await get_vm(p, vm_id, who)
    volume, tenant = await _data_volume(p, who, name, "attach")
    if tenant != vm.tenant:
        raise Conflict(f"volume '{name}' and VM '{vm.name}' belong to different tenants")
    require_state(vm, _ATTACHABLE, f"attach volume '{name}' to")
    if volume.vm_id == vm.id:
        raise Conflict(f"volume '{name}' is attached to VM '{vm.name}' already")
    owner = await _owner(p, volume)
    if owner is not None:
        raise Conflict(f"volume '{name}' is attached to VM '{owner.name}' ({owner.id})")
    if volume.host_id is not None and volume.host_id != vm.host_id:
        raise Conflict(f"volume '{name}' lives in pool {volume.pool} of host {volume.host_id}; "
                       f"VM '{vm.name}' runs on {vm.host_id}")
    inp = AttachmentInput(vm.tenant, name, vm.id, vm.host_id or "", volume.path,
                          stale_attachment=volume.vm_id)
    return await start_operation(p, "AttachVolume", inp, volume_operation_id(name, "attach", _suffix()),
                                 f"volume/{name}", response, vm.tenant, who=who, vm=vm)


async def _detach(p: Platform, who: Principal, name: str, vm_id: str | None,
                  response: Response) -> StorageOperationAccepted:
    if vm_id is not None:
        await get_vm(p, vm_id, who)
    volume, tenant = await _data_volume(p, who, name, "detach")
    if volume.vm_id is None or (vm_id is not None and volume.vm_id != vm_id):
        raise Conflict(f"volume '{name}' is not attached to {'VM ' + vm_id if vm_id else 'any VM'}")
    owner = await _owner(p, volume)
    if owner is not None:
        require_state(owner, _ATTACHABLE, f"detach volume '{name}' from")
    host_id = owner.host_id if owner is not None else None
    inp = AttachmentInput(tenant, name, volume.vm_id, host_id or "", volume.path)
    return await start_operation(p, "DetachVolume", inp, volume_operation_id(name, "detach", _suffix()),
                                 f"volume/{name}", response, tenant, who=who, vm=owner)
