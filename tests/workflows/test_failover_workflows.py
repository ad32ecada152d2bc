"""HostFailover and RestartVm against the real Temporal dev server, with recording stand-ins for
the activities: nothing restarts before the host is fenced or confirmed off, HA VMs restart in
priority order, the rest are left in error, a restart that fails leaves nothing behind."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from shared.failover import FailoverInput, FenceRequest, FenceResult, RestartInput
from shared.models import (
    BeginOperation,
    BootWaitRequest,
    ClaimRelease,
    DomainRef,
    DomainSpec,
    DomainStatus,
    HostAdmin,
    HostRef,
    HostView,
    Image,
    Placement,
    PlacementRequest,
    RootDisk,
    VmList,
    VmRecordUpdate,
    VmState,
    VmSummary,
    Volume,
    VolumeRef,
    VolumeRequest,
)
from shared.names import (
    FENCING_QUEUE,
    INVENTORY_QUEUE,
    ORCHESTRATOR_QUEUE,
    STORAGE_QUEUE,
    host_queue,
)
from tests.workflows.guest_fakes import GuestHosts
from workflows.failover import HostFailover
from workflows.restart import RestartVm

IMAGE = Image("img", "", "/img.qcow2", 1, 96, 1, None, "BOOTED")
HOSTS = ("h1", "h2", "h3")


def summary(name: str, ha: bool = True, priority: int = 0) -> VmSummary:
    return VmSummary(str(uuid.uuid4()), "t", name, VmState.RUNNING, "h1", 1, 128, 1, image="img", ha=ha,
                     restart_priority=priority)


class World:
    def __init__(self, vms: list[VmSummary], fence_fails: bool = False, full_until: int = 0,
                 fail_at: str | None = None, held_for_listings: int = 0) -> None:
        self.held_for_listings = held_for_listings  # VMs held by an operation end it in error then
        self.vms = vms
        self.fence_fails = fence_fails
        self.full_until = full_until  # placement finds no capacity this many times
        self.fail_at = fail_at
        self.calls: list[str] = []
        self.modes: list[str] = []
        self.records: dict[str, VmRecordUpdate] = {}
        self.names = {vm.vm_id: vm.name for vm in vms}
        self.guests = GuestHosts()

    def activities(self):
        @activity.defn(name="fence.run")
        async def fence(req: FenceRequest) -> FenceResult:
            self.calls.append(f"fence:{req.host_id}")
            if self.fence_fails:
                raise ApplicationError("no answer from the BMC", type="fence_failed")
            return FenceResult(req.host_id, req.action, "off")

        @activity.defn(name="scheduler.set_host_admin")
        async def set_admin(admin: HostAdmin) -> HostView:
            self.modes.append(admin.mode.value if admin.mode else "active")
            return HostView(admin.host_id, "x", "qemu", 1, 1, 1, 0, 0, 0, 0, 0.0, 0.0)

        @activity.defn(name="scheduler.place")
        async def place(req: PlacementRequest) -> Placement:
            assert "h1" in req.exclude_hosts
            if self.full_until > 0:
                self.full_until -= 1
                raise ApplicationError("no valid host: ram removed h2, h3", type="no_valid_host",
                                       non_retryable=True)
            self.calls.append(f"place:{self.names[req.vm_id]}")
            return Placement(req.vm_id, "h2", "qemu")

        @activity.defn(name="scheduler.release")
        async def release(req: ClaimRelease) -> None:
            self.calls.append("release")

        @activity.defn(name="storage.locate_root")
        async def locate(ref: VolumeRef) -> RootDisk:
            return RootDisk(ref.vm_id, "shared", "/v.qcow2", None)

        @activity.defn(name="storage.create_volume")
        async def create_volume(req: VolumeRequest) -> Volume:
            return Volume("v", "/v.qcow2", 1, IMAGE)

        @activity.defn(name="inventory.vms_on_host")
        async def vms_on_host(ref: HostRef) -> VmList:
            if self.held_for_listings > 0:
                self.held_for_listings -= 1
                if self.held_for_listings == 0:  # their own operations ended, in error on the dead host
                    self.vms = [replace(vm, state=VmState.ERROR) for vm in self.vms]
            return VmList(tuple(vm for vm in self.vms if vm.host_id == ref.host_id))

        @activity.defn(name="inventory.update_vm")
        async def update_vm(update: VmRecordUpdate) -> None:
            self.records[self.names[update.vm_id]] = update
            self.vms = [replace(vm, state=update.state or vm.state, host_id=update.host_id or vm.host_id)
                        if vm.vm_id == update.vm_id else vm for vm in self.vms]

        @activity.defn(name="inventory.begin_operation")
        async def begin(req: BeginOperation) -> None:
            pass

        def host_activities(host: str):
            @activity.defn(name="host.define_domain")
            async def define(spec: DomainSpec) -> None:
                self.calls.append(f"define:{spec.vm_name}@{host}")

            @activity.defn(name="host.start_domain")
            async def start(ref: DomainRef) -> None:
                self.calls.append(f"start:{self.names[ref.vm_id]}@{host}")

            @activity.defn(name="host.wait_booted")
            async def wait_booted(req: BootWaitRequest) -> DomainStatus:
                if self.fail_at == "wait_booted":
                    raise ApplicationError("the guest stopped while booting", type="hypervisor_error",
                                           non_retryable=True)
                return DomainStatus(req.vm_id, "running", req.min_marker_count)

            @activity.defn(name="host.domain_status")
            async def status(req: BootWaitRequest) -> DomainStatus:
                return DomainStatus(req.vm_id, "absent" if host != "h1" else "shutoff", 2)

            @activity.defn(name="host.evict_domain")
            async def evict(ref: DomainRef) -> None:
                self.calls.append(f"evict:{self.names[ref.vm_id]}@{host}")

            return [define, start, wait_booted, status, evict]

        return {
            ORCHESTRATOR_QUEUE: [set_admin, place, release],
            FENCING_QUEUE: [fence],
            STORAGE_QUEUE: [locate, create_volume],
            INVENTORY_QUEUE: [vms_on_host, update_vm, begin, *self.guests.inventory_activities()],
            **{host_queue(h): host_activities(h) + self.guests.host_activities(h) for h in HOSTS},
        }


async def start_workers(env, world: World):
    workers = []
    for queue, acts in world.activities().items():
        workflows = [HostFailover, RestartVm] if queue == ORCHESTRATOR_QUEUE else []
        workers.append(Worker(env.client, task_queue=queue, activities=acts, workflows=workflows))
    for worker in workers:
        await worker.__aenter__()
    return workers


async def stop_workers(workers) -> None:
    for worker in workers:
        await worker.__aexit__(None, None, None)


def failover(epoch: int | None = None, **kwargs) -> FailoverInput:
    return FailoverInput("h1", epoch or int(uuid.uuid4().int % 10**9), "no heartbeat", concurrency=1, **kwargs)


async def run_failover(env, world: World, inp: FailoverInput) -> str:
    workers = await start_workers(env, world)
    try:
        return await env.client.execute_workflow(
            HostFailover.run, inp, id=f"host-h1-failover-{uuid.uuid4().hex}", task_queue=ORCHESTRATOR_QUEUE,
            execution_timeout=timedelta(seconds=60))
    finally:
        await stop_workers(workers)


async def test_failover_fences_first_then_restarts_ha_vms_by_priority(env):
    vms = [summary("low", priority=1), summary("high", priority=5), summary("plain", ha=False)]
    world = World(vms)
    result = await run_failover(env, world, failover())
    assert result == "2 HA VM(s) restarted off h1; 1 left in error"
    assert world.calls[0] == "fence:h1"
    assert [c for c in world.calls if c.startswith("start:")] == ["start:high@h2", "start:low@h2"]
    assert world.modes == ["fencing", "fenced"]
    assert world.records["plain"].state is VmState.ERROR and "not HA" in world.records["plain"].error
    assert world.records["high"].state is VmState.RUNNING and world.records["high"].host_id == "h2"


async def test_when_fencing_fails_nothing_restarts_until_an_operator_confirms(env):
    world = World([summary("web")], fence_fails=True)
    workers = await start_workers(env, world)
    try:
        handle = await env.client.start_workflow(
            HostFailover.run, failover(fence_attempts=2), id=f"host-h1-failover-{uuid.uuid4().hex}",
            task_queue=ORCHESTRATOR_QUEUE, execution_timeout=timedelta(seconds=60))
        for _ in range(100):
            if (await handle.query("progress"))["step"] == "awaiting_confirmation":
                break
            await asyncio.sleep(0.1)
        assert world.calls == ["fence:h1", "fence:h1"]  # retried, then given up
        assert world.modes == ["fencing", "fence_failed"]
        await asyncio.sleep(1)
        assert not any(c.startswith("start:") for c in world.calls)
        await handle.signal("confirm_fenced")
        assert await handle.result() == "1 HA VM(s) restarted off h1; 0 left in error"
    finally:
        await stop_workers(workers)
    assert world.modes == ["fencing", "fence_failed", "fenced"]
    assert "start:web@h2" in world.calls


async def test_vms_without_capacity_are_retried_when_it_appears(env):
    world = World([summary("web")], full_until=2)
    result = await run_failover(env, world, failover(capacity_retry_s=0.2))
    assert result.startswith("1 HA VM(s) restarted")
    assert world.records["web"].state is VmState.RUNNING


async def test_a_restart_that_fails_leaves_no_definition_and_no_claim(env):
    vm = summary("web")
    world = World([vm], fail_at="wait_booted")
    workers = await start_workers(env, world)
    try:
        with pytest.raises(WorkflowFailureError) as caught:
            await env.client.execute_workflow(
                RestartVm.run, RestartInput(vm, "host h1 failed", None, exclude_hosts=("h1",)),
                id=f"vm-{vm.vm_id}-recover-t", task_queue=ORCHESTRATOR_QUEUE, execution_timeout=timedelta(seconds=60))
    finally:
        await stop_workers(workers)
    assert "the guest stopped while booting" in str(caught.value.cause)
    assert world.calls[-2:] == ["evict:web@h2", "release"]
    assert world.records["web"].state is VmState.ERROR and world.records["web"].error.startswith("host h1 failed")


async def test_a_vm_held_by_another_operation_is_restarted_once_it_is_free(env):
    world = World([replace(summary("busy"), state=VmState.RECOVERING)], held_for_listings=2)
    result = await run_failover(env, world, failover(capacity_retry_s=0.2))
    assert result == "1 HA VM(s) restarted off h1; 0 left in error"
    assert world.records["busy"].state is VmState.RUNNING and world.records["busy"].host_id == "h2"
