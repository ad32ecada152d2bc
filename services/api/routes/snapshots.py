"""/v1/vms/{id}/snapshots: snapshots of a VM's disks (its root disk and the data volumes
attached when it is taken), as qcow2 internal snapshots.

Taking, reverting and deleting a snapshot need the VM stopped (409 otherwise): qemu-img works
on the disk files, and a running guest holds them. Internal snapshots of a running guest would
go through libvirt and save its memory too; that is a different feature (a checkpoint).
"""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Depends, Response

from services.api.models import Vm
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from services.api.storage_models import (
    SnapshotCreate,
    SnapshotPublic,
    StorageOperationAccepted,
    get_vm,
    require_state,
    start_operation,
)
from shared.auth import Principal
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.models import VmState
from shared.names import vm_storage_operation_id
from shared.quota import Amounts, QuotaSettlement, snapshot_hold
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


async def _start(p: Platform, workflow: str, vm: Vm, name: str, action: str, response: Response,
                 quota: QuotaSettlement | None = None, reserved: str | None = None, *,
                 who: Principal) -> StorageOperationAccepted:
    op_id = vm_storage_operation_id(vm.id, action, uuid.uuid4().hex[:8])
    return await start_operation(p, workflow, SnapshotInput(vm.tenant, vm.id, name, quota), op_id,
                                 f"snapshot/{name}", response, vm.tenant, reserved, who=who, vm=vm)


@router.get("", response_model=list[SnapshotPublic])
async def list_snapshots(vm_id: str, p: Platform = Depends(get_platform),
                    who: Principal = Depends(principal)):
    vm = await get_vm(p, vm_id, who)
    return [SnapshotPublic.of(s) for s in (await p.storage.snapshots(vm.id)).snapshots]


@router.get("/{name}", response_model=SnapshotPublic)
async def get_snapshot(vm_id: str, name: str, p: Platform = Depends(get_platform),
                    who: Principal = Depends(principal)):
    vm = await get_vm(p, vm_id, who)
    return SnapshotPublic.of(await _existing(p, vm.id, name))


@router.post("", status_code=202, response_model=StorageOperationAccepted)
async def create_snapshot(vm_id: str, body: SnapshotCreate, response: Response, p: Platform = Depends(get_platform),
                    who: Principal = Depends(principal)):
    """Take a snapshot of the stopped VM's disks."""
    vm = await get_vm(p, vm_id, who)
    require_state(vm, _STOPPED, "take a snapshot of")
    if await _find(p, vm.id, body.name) is not None:
        raise Conflict(f"VM '{vm.name}' has a snapshot named '{body.name}' already")
    hold = snapshot_hold(vm.id, body.name)
    await asyncio.to_thread(p.ledger.reserve, vm.tenant, hold, Amounts(snapshots=1))
    return await _start(p, "CreateSnapshot", vm, body.name, "snapshot", response,
                        QuotaSettlement(commit_on_success=(hold,), release_on_failure=(hold,)), hold, who=who)


@router.post("/{name}/revert", status_code=202, response_model=StorageOperationAccepted)
async def revert_snapshot(vm_id: str, name: str, response: Response, p: Platform = Depends(get_platform),
                    who: Principal = Depends(principal)):
    """Put the stopped VM's disks back to the snapshot; what was written since is lost."""
    vm = await get_vm(p, vm_id, who)
    await _existing(p, vm.id, name)
    require_state(vm, _STOPPED, "revert")
    return await _start(p, "RevertSnapshot", vm, name, "revert", response, who=who)


@router.delete("/{name}", status_code=202, response_model=StorageOperationAccepted)
async def delete_snapshot(vm_id: str, name: str, response: Response, p: Platform = Depends(get_platform),
                    who: Principal = Depends(principal)):
    vm = await get_vm(p, vm_id, who)
    await _existing(p, vm.id, name)
    require_state(vm, _STOPPED, "delete a snapshot of")
    return await _start(p, "DeleteSnapshot", vm, name, "snapdelete", response,
                        QuotaSettlement(release_on_success=(snapshot_hold(vm.id, name),)), who=who)
