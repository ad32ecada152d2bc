"""/v1/vms: create, list, show, delete, power actions. Every change is a workflow; the
response is 202 with the operation's id and Location."""

from __future__ import annotations

import asyncio
import uuid

import structlog
from fastapi import APIRouter, Body, Depends, Query, Response
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from services.api.models import (
    MigrateOptions,
    OperationAccepted,
    PowerOptions,
    Vm,
    VmCreate,
    VmPublic,
    vm_summary,
)
from services.api.network_activities import vm_setup
from services.api.ownership import visible_image
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from shared import events
from shared.auth import Principal
from shared.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    VmflowError,
)
from shared.guest import VmSetup
from shared.migration import ConvergencePolicy, MigrateInput, migration_placement
from shared.models import (
    DeleteInput,
    GroupRule,
    Image,
    Placement,
    PlacementRequest,
    PowerAction,
    PowerInput,
    ProvisionInput,
    RootDisk,
    VmSpec,
    VmState,
)
from shared.names import (
    ORCHESTRATOR_QUEUE,
    delete_workflow_id,
    migrate_workflow_id,
    operation_memo,
    power_workflow_id,
    provision_workflow_id,
)
from shared.operation_tags import move_route, operation_summary, tagged, vm_label
from shared.storage_models import PoolKind

router = APIRouter(prefix="/v1/vms", tags=["vms"])
log = structlog.get_logger(__name__)

PAGE_MAX = 1000  # VMs in one answer of GET /v1/vms
ROOT_DISK_WAIT_S = 1.0  # how long a migration request waits for storage to say where the disk is

_POWER_FROM = {
    PowerAction.START: (VmState.STOPPED, VmState.ERROR, VmState.CRASHED),
    PowerAction.STOP: (VmState.RUNNING, VmState.ERROR, VmState.CRASHED),
    PowerAction.REBOOT: (VmState.RUNNING,),
}
_TRANSITIONAL = {
    PowerAction.START: VmState.STARTING,
    PowerAction.STOP: VmState.STOPPING,
    PowerAction.REBOOT: VmState.REBOOTING,
}
_DELETABLE = (VmState.RUNNING, VmState.STOPPED, VmState.ERROR, VmState.CRASHED, VmState.DELETING)


async def vm_public(p: Platform, vms: list[Vm]) -> list[VmPublic]:
    """The VMs as users see them, each with its NICs."""
    nics = await asyncio.to_thread(p.network_store.nics_of, [vm.id for vm in vms])
    return [VmPublic.model_validate(vm, from_attributes=True).model_copy(update={"nics": nics.get(vm.id, [])})
            for vm in vms]


def _vm_tags(kind: str, action: str, vm: Vm, who: Principal, where: str | None = None,
             target_host_id: str | None = None) -> dict:
    """The start's tags and memo for an operation ``who`` starts on ``vm``; its summary says
    ``where`` (by default: on the VM's host)."""
    if where is None:
        where = f"on {vm.host_id}" if vm.host_id else ""
    return tagged(kind, operation_summary(action, vm_label(vm.name, vm.id), where, vm.tenant), vm_id=vm.id,
                  host_ids=(vm.host_id, target_host_id), tenant=vm.tenant,
                  memo=operation_memo(vm.tenant, who.is_admin))


async def _accepted(p: Platform, response: Response, op_id: str, vm: Vm) -> OperationAccepted:
    response.status_code = 202
    response.headers["Location"] = f"/v1/operations/{op_id}"
    [public] = await vm_public(p, [vm])
    return OperationAccepted(operation_id=op_id, vm=public)


async def _check_spec(p: Platform, body: VmCreate, who: Principal) -> Image:
    """Raises InvalidRequest naming every problem at once; returns the image."""
    s = p.settings
    problems = []
    if body.vcpus > s.max_vcpus:
        problems.append(f"vcpus: at most {s.max_vcpus}")
    if body.memory_mib > s.max_memory_mib:
        problems.append(f"memory_mib: at most {s.max_memory_mib}")
    if body.disk_gib > s.max_disk_gib:
        problems.append(f"disk_gib: at most {s.max_disk_gib}")
    if body.ha and body.storage is PoolKind.LOCAL:
        problems.append("ha: a VM whose root disk is on its host's own pool cannot restart on another "
                        "host; use storage 'shared' for an HA VM")
    image = None
    try:
        await visible_image(p, who, body.image)  # another tenant's template is not there for it
        image = await p.storage.image(body.image)
    except NotFound:
        problems.append(f"image: unknown image '{body.image}' (see GET /v1/images)")
    else:
        if body.memory_mib < image.min_memory_mib:
            problems.append(f"memory_mib: image '{image.name}' needs at least {image.min_memory_mib}")
        if body.disk_gib < image.min_disk_gib:
            problems.append(f"disk_gib: image '{image.name}' needs at least {image.min_disk_gib}")
    if body.placement_group_id is not None:
        try:
            await asyncio.to_thread(p.inventory.get_group, body.placement_group_id, who.tenant)
        except NotFound:
            problems.append(f"placement_group_id: unknown placement group '{body.placement_group_id}'")
    if problems:
        raise InvalidRequest("; ".join(problems))
    return image


async def _group_rule(p: Platform, group_id: str | None, tenant: str) -> GroupRule | None:
    if group_id is None:
        return None
    group = await asyncio.to_thread(p.inventory.get_group, group_id, tenant)
    return GroupRule(group.id, group.policy, group.hard)


@router.post("", status_code=202, response_model=OperationAccepted)
async def create_vm(body: VmCreate, response: Response, p: Platform = Depends(get_platform),
                    who: Principal = Depends(principal)):
    """Provision a VM: 202 at once; follow the operation for its progress. Its NICs' addresses
    are allocated here, with the row, and its share of the tenant's quota reserved: a full subnet,
    a taken address or a quota without room is refused at once."""
    tenant = who.tenant
    image = await _check_spec(p, body, who)
    row = Vm(tenant=tenant, **body.model_dump(exclude={"networks"}))
    vm = await asyncio.to_thread(p.network_store.add_vm, row, body.networks)
    op_id = provision_workflow_id(vm.id)
    try:
        await p.temporal.start_workflow(
            "ProvisionVm",
            ProvisionInput(
                vm.id, vm.name, tenant, VmSpec(vm.vcpus, vm.memory_mib, vm.disk_gib, vm.image, vm.storage),
                boot_timeout_s=p.settings.boot_timeout_s,
                domain_types=image.domain_types,
                required_labels=tuple(vm.required_labels),
                group=await _group_rule(p, vm.placement_group_id, tenant),
            ),
            id=op_id,
            task_queue=ORCHESTRATOR_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,  # a VM is provisioned once
            **tagged("ProvisionVm", operation_summary("provision", vm.name, tenant=tenant), vm_id=vm.id,
                     tenant=tenant, memo=operation_memo(tenant, who.is_admin)),
        )
    except Exception as exc:
        await _settle_ambiguous_start(p, vm, op_id, exc)
    vm = await asyncio.to_thread(p.inventory.update, vm.id, last_operation_id=op_id)
    await events.publish(p.events, events.VmCreated(vm.id, tenant, vm.name, op_id))
    return await _accepted(p, response, op_id, vm)


async def _settle_ambiguous_start(p: Platform, vm: Vm, op_id: str, exc: Exception) -> None:
    """A start that failed may still have reached the server (a timeout after it accepted).
    The row goes only when the server says the workflow does not exist; if it exists the
    create goes on as accepted; if nobody can tell, the row stays in error for its owner to
    delete, so no domain or disk is ever left without a row. Raises unless it was accepted."""
    for attempt in range(3):
        try:
            await p.temporal.get_workflow_handle(op_id).describe()
            return  # it started after all
        except RPCError as probe:
            if probe.status == RPCStatusCode.NOT_FOUND:
                await asyncio.to_thread(p.inventory.remove, vm.id)
                raise ServiceUnavailable(f"could not start the provisioning: {exc}") from exc
        except Exception:
            pass
        await asyncio.sleep(0.5 * (attempt + 1))
    reason = f"the provisioning may or may not have started ({exc}); delete the VM to clean up"
    await asyncio.to_thread(p.inventory.update, vm.id, state=VmState.ERROR, error=reason, last_operation_id=op_id)
    raise ServiceUnavailable(f"could not confirm the provisioning of VM {vm.id}: {exc}") from exc


@router.get("", response_model=list[VmPublic])
async def list_vms(response: Response, p: Platform = Depends(get_platform), who: Principal = Depends(principal),
                   limit: int = Query(PAGE_MAX, ge=1, le=PAGE_MAX, description="at most this many VMs"),
                   offset: int = Query(0, ge=0, description="after skipping this many, oldest first")):
    """One page of VMs, oldest first. ``X-Total-Count`` says how many there are; a ``Link``
    header with ``rel="next"`` names the next page while there is one."""
    vms, total = await asyncio.gather(
        asyncio.to_thread(p.inventory.list, who.visible_tenant, offset, limit),
        asyncio.to_thread(p.inventory.count, who.visible_tenant))
    response.headers["X-Total-Count"] = str(total)
    if offset + len(vms) < total:
        response.headers["Link"] = f'</v1/vms?limit={limit}&offset={offset + len(vms)}>; rel="next"'
    return await vm_public(p, vms)


@router.get("/{vm_id}", response_model=VmPublic)
async def get_vm(vm_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    [vm] = await vm_public(p, [await asyncio.to_thread(p.inventory.get, vm_id, who.visible_tenant)])
    return vm


@router.delete("/{vm_id}", status_code=202, response_model=OperationAccepted)
async def delete_vm(vm_id: str, response: Response, p: Platform = Depends(get_platform),
                    who: Principal = Depends(principal)):
    """Delete a VM with its domain, volume, seed and addresses. Repeating the request returns
    the same operation."""
    vm = await asyncio.to_thread(p.inventory.get, vm_id, who.visible_tenant)
    op_id = delete_workflow_id(vm.id)
    if not await asyncio.to_thread(p.inventory.transition, vm.id, _DELETABLE, VmState.DELETING, op_id):
        raise Conflict(f"VM '{vm.name}' is {vm.state.value}; wait for its operation to finish")
    try:
        await p.temporal.start_workflow(
            "DeleteVm", DeleteInput(vm.id, vm.tenant, vm.host_id), id=op_id,
            task_queue=ORCHESTRATOR_QUEUE, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            **_vm_tags("DeleteVm", "delete", vm, who),
        )
    except WorkflowAlreadyStartedError:
        pass  # the same delete is already under way
    return await _accepted(p, response, op_id, await asyncio.to_thread(p.inventory.get, vm.id))


async def _power(p: Platform, vm_id: str, action: PowerAction, options: PowerOptions, response: Response,
                 who: Principal):
    vm = await asyncio.to_thread(p.inventory.get, vm_id, who.visible_tenant)
    op_id = power_workflow_id(vm.id, action.value, uuid.uuid4().hex[:8])
    if not await asyncio.to_thread(p.inventory.transition, vm.id, _POWER_FROM[action], _TRANSITIONAL[action], op_id):
        allowed = ", ".join(s.value for s in _POWER_FROM[action])
        raise Conflict(f"cannot {action.value} VM '{vm.name}' while it is {vm.state.value} (needs: {allowed})")
    try:
        image = await p.storage.image(vm.image)
        await p.temporal.start_workflow(
            "VmPowerAction",
            PowerInput(vm.id, vm.tenant, action, vm.host_id or "", image.boot_marker,
                       options.timeout_s, options.force, p.settings.boot_timeout_s),
            id=op_id, task_queue=ORCHESTRATOR_QUEUE, **_vm_tags("VmPowerAction", action.value, vm, who),
        )
    except Exception as exc:
        await asyncio.to_thread(p.inventory.update, vm.id, state=vm.state)
        raise ServiceUnavailable(f"could not start the {action.value} operation: {exc}") from exc
    return await _accepted(p, response, op_id, await asyncio.to_thread(p.inventory.get, vm.id))


@router.post("/{vm_id}/start", status_code=202, response_model=OperationAccepted)
async def start_vm(vm_id: str, response: Response, p: Platform = Depends(get_platform),
                   who: Principal = Depends(principal)):
    return await _power(p, vm_id, PowerAction.START, PowerOptions(), response, who)


@router.post("/{vm_id}/stop", status_code=202, response_model=OperationAccepted)
async def stop_vm(vm_id: str, response: Response, options: PowerOptions = Body(default_factory=PowerOptions),
                  p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """Graceful shutdown, forced after ``timeout_s``; ``force`` powers off at once."""
    return await _power(p, vm_id, PowerAction.STOP, options, response, who)


@router.post("/{vm_id}/reboot", status_code=202, response_model=OperationAccepted)
async def reboot_vm(vm_id: str, response: Response, options: PowerOptions = Body(default_factory=PowerOptions),
                    p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """Stop (graceful, then forced after ``timeout_s``) and start again."""
    return await _power(p, vm_id, PowerAction.REBOOT, options, response, who)


async def _root_disk(p: Platform, vm_id: str) -> RootDisk | None:
    """Where the VM's root volume is, if storage says so at once; else the workflow asks it."""
    try:
        return await p.storage.root_disk(vm_id, timeout_s=ROOT_DISK_WAIT_S)
    except Exception as exc:  # a shortcut only: the VM is claimed, and must not stay so for this
        log.info("root disk not read with the request", vm_id=vm_id, error=str(exc))
        return None


async def _setup(p: Platform, vm_id: str) -> VmSetup | None:
    """The VM's NICs, networks and seed as the target host needs them; else the workflow reads them."""
    try:
        return await asyncio.to_thread(vm_setup, p.inventory, p.network_store, vm_id)
    except Exception as exc:
        log.info("networks not read with the request", vm_id=vm_id, error=str(exc))
        return None


async def _placement(p: Platform, req: PlacementRequest) -> Placement | None:
    """The move's target, its claim held there; None: the workflow places it, and says why
    there is no room when there is none."""
    try:
        return await p.scheduler.place(req)
    except Exception as exc:  # a shortcut only, as the reads beside it
        log.info("target not placed with the request", vm_id=req.vm_id, error=str(exc))
        return None


async def _release_quietly(p: Platform, vm_id: str, host_id: str) -> None:
    """Give back a claim no workflow will use; one left behind expires on its own."""
    try:
        await p.scheduler.release(vm_id, host_id)
    except VmflowError as exc:
        log.warning("claim left to expire", vm_id=vm_id, host_id=host_id, error=exc.message)


@router.post("/{vm_id}/migrate", status_code=202, response_model=OperationAccepted)
async def migrate_vm(vm_id: str, response: Response,
                     options: MigrateOptions = Body(default_factory=MigrateOptions),
                     p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """Live-migrate a running VM, or move a stopped VM's definition, to another host (the
    scheduler's pick unless ``target_host_id`` is given). One move per VM at a time: 409."""
    vm = await asyncio.to_thread(p.inventory.get, vm_id, who.visible_tenant)
    if options.target_host_id is not None:
        if options.target_host_id == vm.host_id:
            raise InvalidRequest(f"VM '{vm.name}' already runs on {vm.host_id}")
        try:
            await p.scheduler.host(options.target_host_id)
        except NotFound:
            raise InvalidRequest(f"target_host_id: unknown host '{options.target_host_id}'") from None
    before = vm_summary(vm, await _group_rule(p, vm.placement_group_id, vm.tenant))
    op_id = migrate_workflow_id(vm.id, uuid.uuid4().hex[:8])
    movable = (VmState.RUNNING, VmState.STOPPED)
    if not await asyncio.to_thread(p.inventory.begin_operation, vm.id, op_id, movable, VmState.MIGRATING):
        raise Conflict(f"cannot migrate VM '{vm.name}' while it is {vm.state.value} (needs: running or stopped)")
    # Once the VM is claimed (nothing else changes it now), what the workflow needs is read, and
    # its target placed, at once: the workflow then starts with the move itself.
    setup, root, placement = await asyncio.gather(
        _setup(p, vm.id), _root_disk(p, vm.id), _placement(p, migration_placement(before, options.target_host_id)))
    policy = ConvergencePolicy(completion_timeout_s=options.completion_timeout_s, post_copy=options.post_copy,
                               bandwidth_mib_s=options.bandwidth_mib_s)
    # Tagged with the target already placed: the move is listed under both hosts, and its
    # summary names both, from its start (the workflow adds a target it picks itself).
    target = placement.host_id if placement is not None else options.target_host_id
    start = p.temporal.start_workflow(
        "LiveMigrate", MigrateInput(before, options.target_host_id, policy, claimed=True, setup=setup, root=root,
                                    placement=placement),
        id=op_id, task_queue=ORCHESTRATOR_QUEUE,
        **_vm_tags("LiveMigrate", "live-migrate", vm, who, move_route(vm.host_id, target), target),
    )
    # The answer's view of the VM (claimed: migrating) is read as the workflow starts.
    started, claimed_vm = await asyncio.gather(start, asyncio.to_thread(p.inventory.get, vm.id),
                                               return_exceptions=True)
    if isinstance(started, BaseException):
        if placement is not None:
            await _release_quietly(p, vm.id, placement.host_id)
        await asyncio.to_thread(p.inventory.update, vm.id, state=vm.state)
        raise ServiceUnavailable(f"could not start the migration: {started}") from started
    if isinstance(claimed_vm, BaseException):
        raise claimed_vm
    return await _accepted(p, response, op_id, claimed_vm)
