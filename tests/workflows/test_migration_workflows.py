"""LiveMigrate and HostMaintenance against the real Temporal dev server, with recording
activities standing in for hosts, scheduler and inventory."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from shared.guest import SeedSpec, VmSetup
from shared.migration import (
    MaintenanceInput,
    MigrateInput,
    MigrateRequest,
    MigrateResult,
)
from shared.models import (
    BeginOperation,
    BootWaitRequest,
    ClaimRelease,
    DomainStatus,
    HostAdmin,
    HostRef,
    HostView,
    OperationProgress,
    Placement,
    PlacementRequest,
    RootCopy,
    RootDisk,
    RootDiskRef,
    VmList,
    VmRecordUpdate,
    VmState,
    VmSummary,
    VolumeRef,
)
from shared.names import INVENTORY_QUEUE, ORCHESTRATOR_QUEUE, STORAGE_QUEUE, host_queue
from shared.operation_tags import PROGRESS_MEMO
from tests.workflows.guest_fakes import GuestHosts
from workflows.maintenance import HostMaintenance
from workflows.migrate import LiveMigrate
from workflows.progress import FinalProgress

HOSTS = ("h1", "h2")


class Fleet:
    """Where each VM runs, and a log of what was asked."""

    def __init__(self, where: dict[str, str], refuse: set[str] = frozenset(), slow_s: float = 0.0,
                 local_disks: bool = False) -> None:
        self.where = dict(where)
        # The pools holding each VM's root volume: the shared one, or its host's own.
        self.disks = {vm_id: {f"local-{host}" if local_disks else "shared"} for vm_id, host in where.items()}
        self.requests: list[MigrateRequest] = []
        self.host_state = "running"  # what libvirt says of a VM on its host
        self.source_releases = False  # the source's worker releases the VM as it leaves
        self.unreachable: set[str] = set()  # hosts whose libvirt does not answer
        self.lose_answer: set[str] = set()  # VMs whose move completes but whose answer is lost
        self.lose_after_refusal: set[str] = set()  # hosts that stop answering when a move fails
        self.guests = GuestHosts()  # which host prepared or released each VM's networks
        self.refuse = refuse  # VMs whose migration fails
        self.slow_s = slow_s
        self.calls: list[str] = []
        self.records: list[VmRecordUpdate] = []
        self.recorded_now: list[VmRecordUpdate] = []  # records the orchestrator made over NATS
        self.api_answers_now = True  # the API answers the orchestrator's record over NATS
        self.admin: list[HostAdmin] = []
        self.placed: list[str] = []  # VMs the workflow placed itself

    def host_activities(self, host_id: str):
        @activity.defn(name="host.domain_status")
        async def domain_status(req: BootWaitRequest) -> DomainStatus:
            self.calls.append(f"status {req.vm_id[:4]} {host_id}")
            if host_id in self.unreachable:
                raise ApplicationError(f"cannot reach libvirt on {host_id}", type="host_unavailable",
                                       non_retryable=True)
            return DomainStatus(req.vm_id, self.host_state if self.where.get(req.vm_id) == host_id else "absent")

        @activity.defn(name="host.migrate_domain")
        async def migrate(req: MigrateRequest) -> MigrateResult:
            self.calls.append(f"migrate {req.vm_id[:4]} {host_id}->{req.dest_host_id}")
            self.requests.append(req)
            try:
                for _ in range(int(self.slow_s * 10)):  # cancellation arrives with heartbeats
                    activity.heartbeat()
                    await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                self.calls.append("aborted")
                raise
            if req.vm_id in self.refuse:
                self.unreachable |= self.lose_after_refusal
                raise ApplicationError("the destination refused", type="hypervisor_error", non_retryable=True)
            self.where[req.vm_id] = req.dest_host_id
            if req.vm_id in self.lose_answer:
                raise ApplicationError("the worker went away", type="host_unavailable", non_retryable=True)
            return MigrateResult(req.vm_id, req.dest_host_id, 600, 40, 128, 100,
                                 source_released=self.source_releases)

        return [domain_status, migrate]

    def storage_activities(self):
        def path(ref: RootDiskRef) -> str:
            return f"/{ref.pool}/vm-{ref.vm_id}-root.qcow2"

        def disk(ref: RootDiskRef) -> RootDisk:
            host = ref.pool.removeprefix("local-") if ref.pool != "shared" else None
            return RootDisk(ref.vm_id, ref.pool, path(ref), host)

        @activity.defn(name="storage.locate_root")
        async def locate(ref: VolumeRef) -> RootDisk:
            self.calls.append(f"locate {ref.vm_id[:4]}")
            return disk(RootDiskRef(ref.vm_id, sorted(self.disks[ref.vm_id])[0]))

        @activity.defn(name="storage.copy_root")
        async def copy(req: RootCopy) -> RootDisk:
            assert req.from_pool in self.disks[req.vm_id]
            self.calls.append(f"copy {req.to_pool}")
            self.disks[req.vm_id].add(req.to_pool)
            return disk(RootDiskRef(req.vm_id, req.to_pool))

        @activity.defn(name="storage.prepare_root")
        async def prepare(req: RootCopy) -> RootDisk:
            assert req.from_pool in self.disks[req.vm_id]
            self.calls.append(f"prepare {req.to_pool}")
            self.disks[req.vm_id].add(req.to_pool)
            return disk(RootDiskRef(req.vm_id, req.to_pool))

        @activity.defn(name="storage.drop_root")
        async def drop(ref: RootDiskRef) -> None:
            self.calls.append(f"drop {ref.pool}")
            self.disks[ref.vm_id].discard(ref.pool)

        return [locate, copy, prepare, drop]

    def control_activities(self):
        @activity.defn(name="scheduler.place")
        async def place(req: PlacementRequest) -> Placement:
            self.placed.append(req.vm_id)
            target = req.only_host or next(h for h in HOSTS if h not in req.exclude_hosts)
            return Placement(req.vm_id, target, "qemu", f"qemu+tcp://{target}/system")

        @activity.defn(name="scheduler.release")
        async def release(req: ClaimRelease) -> None:
            self.calls.append(f"release {req.vm_id[:4]}")

        @activity.defn(name="scheduler.set_host_admin")
        async def set_admin(admin: HostAdmin) -> HostView:
            self.admin.append(admin)
            return HostView(admin.host_id, "disabled", "qemu", 1, 1, 1, 0, 0, 0, 0, 0.0, 0.0)

        @activity.defn(name="inventory.record_vm")
        async def record_now(update: VmRecordUpdate) -> None:
            if not self.api_answers_now:
                raise ApplicationError("no service answers on vmflow.inventory.update_vm", type="service_unavailable")
            self.recorded_now.append(update)
            self.records.append(update)

        return [place, release, set_admin, record_now]

    def inventory_activities(self, vms: list[VmSummary]):
        @activity.defn(name="inventory.begin_operation")
        async def begin(req: BeginOperation) -> None:
            self.calls.append(f"begin {req.vm_id[:4]}")

        @activity.defn(name="inventory.update_vm")
        async def update(update: VmRecordUpdate) -> None:
            self.records.append(update)

        @activity.defn(name="inventory.vms_on_host")
        async def on_host(ref: HostRef) -> VmList:
            return VmList(tuple(vm for vm in vms if self.where.get(vm.vm_id) == ref.host_id))

        return [begin, update, on_host]


def vm(name: str, host: str = "h1") -> VmSummary:
    return VmSummary(str(uuid.uuid4()), "default", name, VmState.RUNNING, host, 1, 128, 1)


async def run(env, fleet: Fleet, vms: list[VmSummary], workflow_run, arg, workflow_id: str, cancel_after_s=None):
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(Worker(env.client, task_queue=ORCHESTRATOR_QUEUE,
                                               workflows=[LiveMigrate, HostMaintenance],
                                               activities=fleet.control_activities(),
                                               interceptors=[FinalProgress()]))
        await stack.enter_async_context(Worker(env.client, task_queue=INVENTORY_QUEUE,
                                               activities=fleet.inventory_activities(vms)
                                               + fleet.guests.inventory_activities()))
        await stack.enter_async_context(Worker(env.client, task_queue=STORAGE_QUEUE,
                                               activities=fleet.storage_activities()))
        for host in HOSTS:
            # As the host-worker does: heartbeats (and so cancellations) travel within seconds.
            await stack.enter_async_context(Worker(env.client, task_queue=host_queue(host),
                                                   activities=fleet.host_activities(host)
                                                   + fleet.guests.host_activities(host),
                                                   max_heartbeat_throttle_interval=timedelta(seconds=1)))
        handle = await env.client.start_workflow(workflow_run, arg, id=workflow_id, task_queue=ORCHESTRATOR_QUEUE)
        if cancel_after_s is not None:
            await asyncio.sleep(cancel_after_s)
            await handle.cancel()
        return await handle.result()


async def test_live_migration_records_the_new_host(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"})
    assert await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web), f"vm-{web.vm_id}-migrate-1") == "h2"
    assert fleet.where[web.vm_id] == "h2"
    assert (fleet.records[-1].host_id, fleet.records[-1].state, fleet.records[-1].step) == ("h2", VmState.RUNNING, "succeeded")


async def test_the_moves_record_goes_over_nats_or_else_through_the_task_queue(env):
    web, db = vm("web"), vm("db")
    fleet = Fleet({web.vm_id: "h1", db.vm_id: "h1"})
    assert await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web), f"vm-{web.vm_id}-migrate-13") == "h2"
    assert [(r.vm_id, r.step) for r in fleet.recorded_now] == [(web.vm_id, "succeeded")]
    fleet.api_answers_now = False  # no API replica answers over NATS: the record waits on its queue
    assert await run(env, fleet, [db], LiveMigrate.run, MigrateInput(db), f"vm-{db.vm_id}-migrate-14") == "h2"
    assert [r.vm_id for r in fleet.recorded_now] == [web.vm_id]
    assert (fleet.records[-1].vm_id, fleet.records[-1].host_id, fleet.records[-1].step) == (db.vm_id, "h2", "succeeded")


async def test_failed_migration_leaves_the_vm_recorded_on_its_source(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"}, refuse={web.vm_id})
    with pytest.raises(WorkflowFailureError) as caught:
        await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web), f"vm-{web.vm_id}-migrate-2")
    assert "the destination refused; the VM is on h1" in caught.value.cause.message
    assert f"release {web.vm_id[:4]}" in fleet.calls
    last = fleet.records[-1]
    assert (last.host_id, last.state, last.step) == ("h1", VmState.RUNNING, "failed")


async def test_a_move_that_completed_without_its_answer_is_a_success(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"}, local_disks=True)
    fleet.lose_answer = {web.vm_id}
    assert await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web), f"vm-{web.vm_id}-migrate-7") == "h2"
    last = fleet.records[-1]
    assert (last.host_id, last.state, last.step) == ("h2", VmState.RUNNING, "succeeded")
    assert fleet.disks[web.vm_id] == {"local-h2"}


async def test_a_vm_no_host_vouches_for_is_recorded_in_error_and_its_disks_are_kept(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"}, refuse={web.vm_id}, local_disks=True)
    fleet.lose_after_refusal = {"h1"}
    with pytest.raises(WorkflowFailureError) as caught:
        await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web), f"vm-{web.vm_id}-migrate-6")
    assert "the VM is on h1 (unconfirmed)" in caught.value.cause.message
    last = fleet.records[-1]
    assert (last.host_id, last.state) == ("h1", VmState.ERROR)
    assert "neither h1 nor h2 confirmed where the VM is" in last.error
    assert fleet.disks[web.vm_id] == {"local-h1", "local-h2"}  # nothing destroyed on a guess


async def test_the_target_is_prepared_before_the_vm_arrives_and_the_source_released(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"})
    setup = VmSetup(web.vm_id, seed=SeedSpec(web.vm_id, "web"))  # as the API reads it with the request
    assert await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web, setup=setup),
                     f"vm-{web.vm_id}-migrate-8") == "h2"
    assert fleet.guests.calls == [f"prepare:{web.vm_id}@h2", f"release:{web.vm_id}@h1"]
    # An ended operation keeps its last progress where the API reads it without a worker.
    final = await final_progress(env, f"vm-{web.vm_id}-migrate-8")
    assert (final.step, final.host_id) == ("done", "h2")
    assert final.steps_done == ("begin", "check", "prepare_host", "migrate", "record")


async def test_a_source_that_released_the_vm_as_it_left_is_not_asked_again(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"})
    fleet.source_releases = True
    setup = VmSetup(web.vm_id, seed=SeedSpec(web.vm_id, "web"))
    assert await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web, setup=setup),
                     f"vm-{web.vm_id}-migrate-11") == "h2"
    assert fleet.guests.calls == [f"prepare:{web.vm_id}@h2"]


async def test_what_the_request_read_is_not_asked_again(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"})
    inp = MigrateInput(web, setup=VmSetup(web.vm_id), root=RootDisk(web.vm_id, "shared", "/shared/web.qcow2", None))
    assert await run(env, fleet, [web], LiveMigrate.run, inp, f"vm-{web.vm_id}-migrate-12") == "h2"
    assert fleet.calls == [f"begin {web.vm_id[:4]}", f"migrate {web.vm_id[:4]} h1->h2"]  # the source checks
    assert fleet.where[web.vm_id] == "h2" and fleet.records[-1].step == "succeeded"


async def test_a_target_the_request_placed_is_where_the_vm_goes(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"})
    placed = Placement(web.vm_id, "h2", "qemu", "qemu+tcp://h2/system")  # its claim held by the API
    inp = MigrateInput(web, setup=VmSetup(web.vm_id), root=RootDisk(web.vm_id, "shared", "/shared/web.qcow2", None),
                       placement=placed)
    assert await run(env, fleet, [web], LiveMigrate.run, inp, f"vm-{web.vm_id}-migrate-15") == "h2"
    assert fleet.placed == [] and fleet.where[web.vm_id] == "h2"
    fleet.refuse = {web.vm_id}  # a move that fails gives the claim back where it was placed
    with pytest.raises(WorkflowFailureError):
        await run(env, fleet, [web], LiveMigrate.run, replace(inp, vm=replace(web, host_id="h2"),
                                                                placement=replace(placed, host_id="h1")),
                  f"vm-{web.vm_id}-migrate-16")
    assert fleet.placed == [] and f"release {web.vm_id[:4]}" in fleet.calls


async def test_a_disk_the_request_found_on_another_host_refuses_the_move(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"})
    root = RootDisk(web.vm_id, "local-h2", "/local-h2/web.qcow2", "h2")
    with pytest.raises(WorkflowFailureError) as caught:
        await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web, setup=VmSetup(web.vm_id), root=root),
                  f"vm-{web.vm_id}-migrate-13")
    assert "the VM is on h1 but its root disk is in local-h2" in caught.value.cause.message
    assert fleet.requests == [] and fleet.records[-1].step == "failed"


async def test_a_vm_with_nothing_to_prepare_moves_without_a_call_to_its_target(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"})
    assert await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web, setup=VmSetup(web.vm_id)),
                     f"vm-{web.vm_id}-migrate-9") == "h2"
    assert fleet.guests.calls == [f"release:{web.vm_id}@h1"]


async def test_a_failed_check_undoes_the_target_prepared_meanwhile(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"})
    fleet.host_state = "paused"  # not what a live move needs
    setup = VmSetup(web.vm_id, seed=SeedSpec(web.vm_id, "web"))
    with pytest.raises(WorkflowFailureError) as caught:
        await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web, setup=setup), f"vm-{web.vm_id}-migrate-10")
    assert "the VM is paused on h1, expected running" in caught.value.cause.message
    assert fleet.requests == []  # no migration was asked of libvirt
    assert fleet.guests.calls == [f"prepare:{web.vm_id}@h2", f"release:{web.vm_id}@h2"]
    assert f"release {web.vm_id[:4]}" in fleet.calls  # the target's claim too
    last = fleet.records[-1]
    assert (last.host_id, last.state, last.step) == ("h1", VmState.RUNNING, "failed")
    final = await final_progress(env, f"vm-{web.vm_id}-migrate-10")
    assert final.step == "failed" and "the VM stays on h1" in final.details


async def final_progress(env, workflow_id: str) -> OperationProgress:
    desc = await env.client.get_workflow_handle(workflow_id).describe()
    return await desc.memo_value(PROGRESS_MEMO, type_hint=OperationProgress)


async def test_a_disk_on_the_source_host_moves_with_its_vm(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"}, local_disks=True)
    assert await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web), f"vm-{web.vm_id}-migrate-4") == "h2"
    assert fleet.disks[web.vm_id] == {"local-h2"}
    assert [c for c in fleet.calls if c.split()[0] in ("prepare", "copy", "drop")] == ["prepare local-h2", "drop local-h1"]
    (move,) = fleet.requests[-1].disk_moves
    assert (move.source_path, move.dest_path) == (f"/local-h1/vm-{web.vm_id}-root.qcow2",
                                                  f"/local-h2/vm-{web.vm_id}-root.qcow2")

    # Cold: the disk is copied whole first; when the move fails the copy goes, the original stays.
    db = replace(vm("db"), state=VmState.STOPPED)
    fleet = Fleet({db.vm_id: "h1"}, refuse={db.vm_id}, local_disks=True)
    fleet.host_state = "shutoff"
    with pytest.raises(WorkflowFailureError):
        await run(env, fleet, [db], LiveMigrate.run, MigrateInput(db), f"vm-{db.vm_id}-migrate-5")
    assert fleet.disks[db.vm_id] == {"local-h1"} and fleet.requests[-1].live is False
    assert [c for c in fleet.calls if c.split()[0] in ("prepare", "copy", "drop")] == ["copy local-h2", "drop local-h2"]


async def test_cancelled_migration_aborts_and_stays_on_the_source(env):
    web = vm("web")
    fleet = Fleet({web.vm_id: "h1"}, slow_s=30)
    with pytest.raises(WorkflowFailureError):  # the workflow ends cancelled
        await run(env, fleet, [web], LiveMigrate.run, MigrateInput(web), f"vm-{web.vm_id}-migrate-3",
                  cancel_after_s=2.0)
    assert "aborted" in fleet.calls and fleet.where[web.vm_id] == "h1"
    assert (fleet.records[-1].host_id, fleet.records[-1].step) == ("h1", "failed")


async def test_maintenance_empties_the_host_or_says_which_vm_stayed(env):
    vms = [vm("a"), vm("b"), vm("c")]
    fleet = Fleet({v.vm_id: "h1" for v in vms})
    summary = await run(env, fleet, vms, HostMaintenance.run, MaintenanceInput("h1"), "host-h1-maintenance-t1")
    assert summary == "3 VM(s) moved off h1"
    assert set(fleet.where.values()) == {"h2"}
    assert [a.mode for a in fleet.admin] == ["maintenance", "maintenance"]

    stuck = [vm("d"), vm("e")]
    fleet = Fleet({v.vm_id: "h1" for v in stuck}, refuse={stuck[1].vm_id})
    with pytest.raises(WorkflowFailureError) as caught:
        await run(env, fleet, stuck, HostMaintenance.run, MaintenanceInput("h1"), "host-h1-maintenance-t2")
    assert "maintenance failed: e: " in caught.value.cause.message
    assert fleet.admin[-1].mode == "maintenance_failed" and "e: " in fleet.admin[-1].reason
