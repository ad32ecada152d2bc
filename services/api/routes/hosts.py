"""/v1/hosts: the fleet as the scheduler sees it, with allocations, and operators' enable/disable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Body, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from services.api.platform import Platform, get_platform
from shared.errors import Conflict
from shared.migration import MaintenanceInput
from shared.models import HostAdmin, HostMode, HostView
from shared.names import ORCHESTRATOR_QUEUE, maintenance_workflow_id
from shared.operation_tags import operation_summary, tagged

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])


class AllocationPublic(BaseModel):
    vm_id: str
    vm_name: str | None
    vcpus: int
    memory_mib: int
    disk_gib: int
    kind: str
    placement_group_id: str | None


class HostPublic(BaseModel):
    id: str
    state: str = Field(description=(
        "up, down, disabled, maintenance, maintenance_failed, worker_silent (its worker is silent but "
        "peers reach its libvirt), failed, fencing, fenced, fence_failed"))
    state_reason: str = ""
    operation_id: str = Field(default="", description="the failover or maintenance that put the host in its state")
    liveness: str = Field(default="unknown", description=(
        "the liveness monitor's verdict from the host's heartbeat and its peers: up, worker_silent, failed, held"))
    disabled_reason: str
    domain_type: str
    cluster: str
    labels: list[str]
    capacity: dict[str, int]
    used: dict[str, int]
    domain_count: int
    last_heartbeat: datetime
    last_heartbeat_age_s: float
    allocations: list[AllocationPublic] | None = None


class DisableRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=200, description="shown to other operators")


def _public(h: HostView, names: dict[str, str] | None = None) -> HostPublic:
    allocations = None
    if names is not None:
        allocations = [
            AllocationPublic(vm_id=a.vm_id, vm_name=names.get(a.vm_id), vcpus=a.vcpus, memory_mib=a.memory_mib,
                             disk_gib=a.disk_gib, kind=a.kind, placement_group_id=a.group)
            for a in h.allocations
        ]
    return HostPublic(
        id=h.host_id, state=h.state, state_reason=h.state_reason, operation_id=h.operation_id, liveness=h.liveness, disabled_reason=h.disabled_reason, domain_type=h.domain_type,
        cluster=h.cluster, labels=list(h.labels),
        capacity={"vcpus": h.vcpus_total, "memory_mib": h.memory_mib_total, "disk_gib": h.disk_gib_total},
        used={"vcpus": h.vcpus_used, "memory_mib": h.memory_mib_used, "disk_gib": h.disk_gib_used},
        domain_count=h.domain_count,
        last_heartbeat=datetime.fromtimestamp(h.last_heartbeat_at_s, UTC),
        last_heartbeat_age_s=round(h.last_heartbeat_age_s, 2),
        allocations=allocations,
    )


async def _detailed(p: Platform, view: HostView) -> HostPublic:
    vms = await asyncio.to_thread(p.inventory.on_host, view.host_id)
    return _public(view, {vm.id: vm.name for vm in vms})


@router.get("", response_model=list[HostPublic], response_model_exclude_none=True)
async def list_hosts(response: Response, offset: int = Query(0, ge=0), limit: int = Query(500, ge=1, le=500),
                     p: Platform = Depends(get_platform)):
    """Hosts in id order, a page at a time; ``X-Total-Count`` says how many there are."""
    page = await p.scheduler.hosts(offset, limit)
    response.headers["X-Total-Count"] = str(page.total)
    return [_public(h) for h in page.hosts]


@router.get("/{host_id}", response_model=HostPublic)
async def get_host(host_id: str, p: Platform = Depends(get_platform)):
    """With every allocation on the host: domains it reports and claims placed on it."""
    return await _detailed(p, await p.scheduler.host(host_id))


@router.post("/{host_id}/disable", response_model=HostPublic)
async def disable_host(host_id: str, body: DisableRequest = Body(default_factory=DisableRequest),
                       p: Platform = Depends(get_platform)):
    """No new VM is placed on a disabled host; VMs already there keep running."""
    return await _detailed(p, await p.scheduler.set_host_admin(HostAdmin(host_id, False, body.reason)))


@router.post("/{host_id}/enable", response_model=HostPublic)
async def enable_host(host_id: str, p: Platform = Depends(get_platform)):
    """Return a host to service: a disabled one, or a fenced one that is back (its stale copies
    are removed as soon as its worker reports). Refused while its failover is fencing it or
    waits for a confirmation."""
    view = await p.scheduler.host(host_id)
    if view.state in (HostMode.FENCING.value, HostMode.FENCE_FAILED.value):
        raise Conflict(f"host {host_id} is {view.state}; wait for its failover ({view.operation_id}) or "
                       "confirm it is off (POST /v1/hosts/{id}/confirm-fenced)")
    if view.state == HostMode.FENCED.value and view.liveness != "up":
        raise Conflict(f"host {host_id} is fenced and has not reported in since ({view.liveness}): "
                       "power it on and wait for its worker first")
    return await _detailed(p, await p.scheduler.set_host_admin(HostAdmin(host_id, True)))


class MaintenanceAccepted(BaseModel):
    operation_id: str
    host: HostPublic


@router.post("/{host_id}/maintenance", status_code=202, response_model=MaintenanceAccepted)
async def enter_maintenance(host_id: str, response: Response, p: Platform = Depends(get_platform)):
    """Stop placing VMs on the host and live-migrate every VM off it. The operation reports
    each VM's fate; a VM that cannot move leaves the host in ``maintenance_failed``."""
    await p.scheduler.host(host_id)  # NotFound for unknown hosts
    op_id = maintenance_workflow_id(host_id)
    # Placement stops at once, before the answer; the workflow then moves the VMs off.
    await p.scheduler.set_host_admin(HostAdmin(host_id, False, "entering maintenance", HostMode.MAINTENANCE))
    try:
        await p.temporal.start_workflow(
            "HostMaintenance", MaintenanceInput(host_id), id=op_id, task_queue=ORCHESTRATOR_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            **tagged("HostMaintenance", operation_summary("maintenance of", host_id), host_ids=(host_id,)),
        )
    except WorkflowAlreadyStartedError:
        raise Conflict(f"host {host_id} is entering maintenance already ({op_id})") from None
    response.headers["Location"] = f"/v1/operations/{op_id}"
    return MaintenanceAccepted(operation_id=op_id, host=await _detailed(p, await p.scheduler.host(host_id)))


class ConfirmFenced(BaseModel):
    operation_id: str
    host: HostPublic


@router.post("/{host_id}/confirm-fenced", response_model=ConfirmFenced)
async def confirm_fenced(host_id: str, p: Platform = Depends(get_platform)):
    """An operator confirms that a failed host is off (powered down by hand, unplugged) after
    fencing it failed: its HA VMs restart elsewhere. Refused (409) for a host that is not
    waiting for it: one that is up, or whose fencing did not fail. Never say it of a host that
    may still run its guests: they would run twice."""
    view = await p.scheduler.host(host_id)  # NotFound for unknown hosts
    if view.state != HostMode.FENCE_FAILED.value:
        raise Conflict(f"host {host_id} is {view.state}: only a failed host whose fencing failed "
                       "(fence_failed) waits for a confirmation")
    op_id = view.operation_id
    await p.temporal.get_workflow_handle(op_id).signal("confirm_fenced")
    return ConfirmFenced(operation_id=op_id, host=await _detailed(p, await p.scheduler.host(host_id)))


@router.delete("/{host_id}/maintenance", response_model=HostPublic)
async def leave_maintenance(host_id: str, p: Platform = Depends(get_platform)):
    """Return the host to service; an evacuation still running is cancelled first."""
    await p.scheduler.host(host_id)
    handle = p.temporal.get_workflow_handle(maintenance_workflow_id(host_id))
    try:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.cancel()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
    return await _detailed(p, await p.scheduler.set_host_admin(HostAdmin(host_id, True)))
