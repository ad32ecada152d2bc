"""/v1/vms/{id}/snapshots: snapshots of a VM's disks (its root disk and the data volumes
attached when it is taken), as qcow2 internal snapshots.

Taking, reverting and deleting a snapshot need the VM stopped (409 otherwise): qemu-img works
on the disk files, and a running guest holds them. Internal snapshots of a running guest would
go through libvirt and save its memory too; that is a different feature (a checkpoint).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Response

from services.api.platform import Platform, get_platform
from services.api.storage_models import (
    SnapshotCreate,
    SnapshotPublic,
    StorageOperationAccepted,
    get_vm,
    require_state,
    start_operation,
)
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.models import VmState
from shared.names import vm_storage_operation_id
from shared.storage_models import SnapshotInput, SnapshotView, check_snapshot_name

router = APIRouter(prefix="/v1/vms/{vm_id}/snapshots", tags=["storage"])
_STOPPED = (VmState.STOPPED,)


async def _find(p: Platform, vm_id: str, name: str) -> SnapshotView | None:
    for snapshot in (await p.storage.snapshots(vm_id)).snapshots:
        if snapshot.name == name:
            return snapshot
    return None


async def _existing(p: Platform, vm_id: str, name: str) -> SnapshotView:
    try:
        check_snapshot_name(name)
    except InvalidRequest:
        raise NotFound(f"VM {vm_id} has no snapshot named '{name}'") from None
    snapshot = await _find(p, vm_id, name)
    if snapshot is None:
        raise NotFound(f"VM {vm_id} has no snapshot named '{name}'")
    return snapshot


async def _start(p: Platform, workflow: str, vm_id: str, name: str, action: str,
                 response: Response) -> StorageOperationAccepted:
    op_id = vm_storage_operation_id(vm_id, action, uuid.uuid4().hex[:8])
    return await start_operation(p, workflow, SnapshotInput(p.settings.default_tenant, vm_id, name), op_id,
                                 f"snapshot/{name}", response)


@router.get("", response_model=list[SnapshotPublic])
async def list_snapshots(vm_id: str, p: Platform = Depends(get_platform)):
    vm = await get_vm(p, vm_id)
    return [SnapshotPublic.of(s) for s in (await p.storage.snapshots(vm.id)).snapshots]


@router.get("/{name}", response_model=SnapshotPublic)
async def get_snapshot(vm_id: str, name: str, p: Platform = Depends(get_platform)):
    vm = await get_vm(p, vm_id)
    return SnapshotPublic.of(await _existing(p, vm.id, name))


@router.post("", status_code=202, response_model=StorageOperationAccepted)
async def create_snapshot(vm_id: str, body: SnapshotCreate, response: Response, p: Platform = Depends(get_platform)):
    """Take a snapshot of the stopped VM's disks."""
    vm = await get_vm(p, vm_id)
    require_state(vm, _STOPPED, "take a snapshot of")
    if await _find(p, vm.id, body.name) is not None:
        raise Conflict(f"VM '{vm.name}' has a snapshot named '{body.name}' already")
    return await _start(p, "CreateSnapshot", vm.id, body.name, "snapshot", response)


@router.post("/{name}/revert", status_code=202, response_model=StorageOperationAccepted)
async def revert_snapshot(vm_id: str, name: str, response: Response, p: Platform = Depends(get_platform)):
    """Put the stopped VM's disks back to the snapshot; what was written since is lost."""
    vm = await get_vm(p, vm_id)
    await _existing(p, vm.id, name)
    require_state(vm, _STOPPED, "revert")
    return await _start(p, "RevertSnapshot", vm.id, name, "revert", response)


@router.delete("/{name}", status_code=202, response_model=StorageOperationAccepted)
async def delete_snapshot(vm_id: str, name: str, response: Response, p: Platform = Depends(get_platform)):
    vm = await get_vm(p, vm_id)
    await _existing(p, vm.id, name)
    require_state(vm, _STOPPED, "delete a snapshot of")
    return await _start(p, "DeleteSnapshot", vm.id, name, "snapdelete", response)
