"""/v1/volumes: every volume of every pool (VM root disks included), data volumes made empty or
cloned from an image, resized (grow only), attached to and detached from VMs, deleted.

A volume still naming a VM that no longer exists as its owner is free: the routes pass that
stale owner on, and the storage service lets exactly that one be replaced.
"""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Depends, Response

from services.api.models import Vm
from services.api.platform import Platform, get_platform
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
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.models import VmState
from shared.names import volume_operation_id
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


async def _data_volume(p: Platform, name: str, action: str) -> VolumeView:
    volume = await p.storage.volume(name)
    if volume.kind is VolumeKind.ROOT:
        raise Conflict(f"cannot {action} '{name}': it is the root disk of VM {volume.vm_id}")
    return volume


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


@router.get("/volumes", response_model=list[VolumePublic])
async def list_volumes(p: Platform = Depends(get_platform)):
    return [VolumePublic.of(v) for v in (await p.storage.volumes()).volumes]


@router.get("/volumes/{name}", response_model=VolumePublic)
async def get_volume(name: str, p: Platform = Depends(get_platform)):
    return VolumePublic.of(await p.storage.volume(name))


@router.post("/volumes", status_code=202, response_model=StorageOperationAccepted)
async def create_volume(body: VolumeCreate, response: Response, p: Platform = Depends(get_platform)):
    """An empty data volume, or a thin or full clone of an image (``image``, ``clone``)."""
    req = VolumeCreateRequest(body.name, body.pool, body.size_gib, body.image, body.clone)
    try:
        await p.storage.check_volume(req)
    except NotFound as exc:  # an unknown image named in the body
        raise InvalidRequest(f"image: {exc.message}") from None
    return await start_operation(p, "CreateVolume", CreateVolumeInput(p.settings.default_tenant, req),
                                 volume_operation_id(body.name, "create"), f"volume/{body.name}", response)


@router.post("/volumes/{name}/resize", status_code=202, response_model=StorageOperationAccepted)
async def resize_volume(name: str, body: VolumeResize, response: Response, p: Platform = Depends(get_platform)):
    """Grow a data volume; shrinking is refused (422). A volume attached to a VM that is not
    stopped cannot be resized (409)."""
    volume = await _data_volume(p, name, "resize")
    if body.size_gib < volume.size_gib:
        raise InvalidRequest(f"size_gib: volumes only grow; '{name}' has {volume.size_gib:g} GiB")
    owner = await _owner(p, volume)
    if owner is not None:
        require_state(owner, (VmState.STOPPED,), f"resize volume '{name}' attached to")
    req = ResizeVolumeInput(p.settings.default_tenant, VolumeResizeRequest(name, body.size_gib))
    return await start_operation(p, "ResizeVolume", req, volume_operation_id(name, "resize", _suffix()),
                                 f"volume/{name}", response)


@router.delete("/volumes/{name}", status_code=202, response_model=StorageOperationAccepted)
async def delete_volume(name: str, response: Response, p: Platform = Depends(get_platform)):
    """Delete a data volume; 409 while it is attached to a VM."""
    volume = await _data_volume(p, name, "delete")
    owner = await _owner(p, volume)
    if owner is not None:
        raise Conflict(f"volume '{name}' is attached to VM '{owner.name}' ({owner.id}); detach it first")
    req = VolumeDeleteRequest(name, stale_attachment=volume.vm_id)
    return await start_operation(p, "DeleteVolume", DeleteVolumeInput(p.settings.default_tenant, req),
                                 volume_operation_id(name, "delete"), f"volume/{name}", response)


@router.post("/volumes/{name}/attach", status_code=202, response_model=StorageOperationAccepted)
async def attach_volume(name: str, body: VolumeAttach, response: Response, p: Platform = Depends(get_platform)):
    return await _attach(p, body.vm_id, name, response)


@router.post("/volumes/{name}/detach", status_code=202, response_model=StorageOperationAccepted)
async def detach_volume(name: str, response: Response, p: Platform = Depends(get_platform)):
    return await _detach(p, name, None, response)


@router.get("/vms/{vm_id}/volumes", response_model=list[VolumePublic])
async def list_vm_volumes(vm_id: str, p: Platform = Depends(get_platform)):
    """The VM's root disk and the data volumes attached to it."""
    vm = await get_vm(p, vm_id)
    return [VolumePublic.of(v) for v in (await p.storage.volumes()).volumes if v.vm_id == vm.id]


@router.post("/vms/{vm_id}/volumes/{name}", status_code=202, response_model=StorageOperationAccepted)
async def attach_to_vm(vm_id: str, name: str, response: Response, p: Platform = Depends(get_platform)):
    """Attach a data volume: hot-plugged into a running VM (and kept in its definition), or
    added to a stopped VM's definition."""
    return await _attach(p, vm_id, name, response)


@router.delete("/vms/{vm_id}/volumes/{name}", status_code=202, response_model=StorageOperationAccepted)
async def detach_from_vm(vm_id: str, name: str, response: Response, p: Platform = Depends(get_platform)):
    return await _detach(p, name, vm_id, response)


async def _attach(p: Platform, vm_id: str, name: str, response: Response) -> StorageOperationAccepted:
    vm = await get_vm(p, vm_id)
    volume = await _data_volume(p, name, "attach")
    require_state(vm, _ATTACHABLE, f"attach volume '{name}' to")
    if volume.vm_id == vm.id:
        raise Conflict(f"volume '{name}' is attached to VM '{vm.name}' already")
    owner = await _owner(p, volume)
    if owner is not None:
        raise Conflict(f"volume '{name}' is attached to VM '{owner.name}' ({owner.id})")
    if volume.host_id is not None and volume.host_id != vm.host_id:
        raise Conflict(f"volume '{name}' lives in pool {volume.pool} of host {volume.host_id}; "
                       f"VM '{vm.name}' runs on {vm.host_id}")
    inp = AttachmentInput(p.settings.default_tenant, name, vm.id, vm.host_id or "", volume.path,
                          stale_attachment=volume.vm_id)
    return await start_operation(p, "AttachVolume", inp, volume_operation_id(name, "attach", _suffix()),
                                 f"volume/{name}", response)


async def _detach(p: Platform, name: str, vm_id: str | None, response: Response) -> StorageOperationAccepted:
    if vm_id is not None:
        await get_vm(p, vm_id)
    volume = await _data_volume(p, name, "detach")
    if volume.vm_id is None or (vm_id is not None and volume.vm_id != vm_id):
        raise Conflict(f"volume '{name}' is not attached to {'VM ' + vm_id if vm_id else 'any VM'}")
    owner = await _owner(p, volume)
    if owner is not None:
        require_state(owner, _ATTACHABLE, f"detach volume '{name}' from")
    host_id = owner.host_id if owner is not None else None
    inp = AttachmentInput(p.settings.default_tenant, name, volume.vm_id, host_id or "", volume.path)
    return await start_operation(p, "DetachVolume", inp, volume_operation_id(name, "detach", _suffix()),
                                 f"volume/{name}", response)
