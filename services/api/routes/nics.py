"""/v1/vms/{id}/nics: a VM's NICs; plug one in and pull one out, running or stopped (hot-plug)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response

from services.api.guest_config import NicPublic, NicRequest
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from services.api.storage_models import (
    StorageOperationAccepted,
    require_state,
    start_operation,
)
from shared.auth import Principal
from shared.guest import NicOpInput
from shared.models import VmState
from shared.names import nic_workflow_id

router = APIRouter(prefix="/v1/vms/{vm_id}/nics", tags=["vms"])

_PLUGGABLE = (VmState.RUNNING, VmState.STOPPED)


@router.get("", response_model=list[NicPublic])
async def list_nics(vm_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    vm = await asyncio.to_thread(p.inventory.get, vm_id, who.visible_tenant)
    return (await asyncio.to_thread(p.network_store.nics_of, [vm.id])).get(vm.id, [])


@router.post("", status_code=202, response_model=StorageOperationAccepted)
async def attach_nic(vm_id: str, body: NicRequest, response: Response, p: Platform = Depends(get_platform),
                     who: Principal = Depends(principal)):
    """Allocate the NIC's MAC and address now (a full subnet or a taken address is refused at
    once), then plug it in on the VM's host: a running guest sees it appear."""
    vm = await asyncio.to_thread(p.inventory.get, vm_id, who.visible_tenant)
    require_state(vm, _PLUGGABLE, "plug a NIC into")
    port = await asyncio.to_thread(p.network_store.add_nic, vm, body)
    op_id = nic_workflow_id(vm.id, "attach", port.id)
    try:
        return await start_operation(p, "AttachNic", NicOpInput(vm.id, vm.tenant, vm.host_id or "", port.id), op_id,
                                     f"port/{port.id}", response, vm.tenant, who=who, vm=vm)
    except Exception:
        await asyncio.to_thread(p.network_store.remove_port, port.id)
        raise


@router.delete("/{port_id}", status_code=202, response_model=StorageOperationAccepted)
async def detach_nic(vm_id: str, port_id: str, response: Response, p: Platform = Depends(get_platform),
                     who: Principal = Depends(principal)):
    """Pull the NIC out (a running guest is asked to let go first), then free its address."""
    vm = await asyncio.to_thread(p.inventory.get, vm_id, who.visible_tenant)
    port = await asyncio.to_thread(p.network_store.nic, vm.id, port_id)
    require_state(vm, _PLUGGABLE, "pull a NIC out of")
    op_id = nic_workflow_id(vm.id, "detach", port.id)
    return await start_operation(p, "DetachNic", NicOpInput(vm.id, vm.tenant, vm.host_id or "", port.id), op_id,
                                 f"port/{port.id}", response, vm.tenant, who=who, vm=vm)
