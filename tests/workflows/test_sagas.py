"""Workflow logic against the real Temporal dev server, with recording stand-ins for the
activities: each step's failure undoes exactly what earlier steps made, in reverse order."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from shared.guest import SeedSpec, VmRelease, VmSetup, VmSetupRequest
from shared.models import (
    BootWaitRequest,
    ClaimRelease,
    DeleteInput,
    DomainRef,
    DomainSpec,
    DomainStatus,
    Image,
    Placement,
    PlacementRequest,
    PowerAction,
    PowerInput,
    ProvisionInput,
    StopRequest,
    VmRecordUpdate,
    VmRef,
    VmSpec,
    Volume,
    VolumeRef,
    VolumeRequest,
)
from shared.names import INVENTORY_QUEUE, ORCHESTRATOR_QUEUE, STORAGE_QUEUE, host_queue
from shared.networks import NetworkPlumbing, NicSpec
from workflows.delete import DeleteVm
from workflows.power import VmPowerAction
from workflows.provision import PROVISION_ID_REUSE, ProvisionVm

IMAGE = Image("img", "", "/img.qcow2", 1, 96, 1, None, "BOOTED")
NETWORK = NetworkPlumbing("net-1", 1000, "10.0.0.0/24", dhcp_address="10.0.0.1", dhcp_mac="52:54:00:00:00:01")
NIC = NicSpec("port-1", "net-1", 1000, "52:54:00:00:00:02", "10.0.0.2")


class World:
    """Activities that record calls and fail on demand."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.fail_at = fail_at
        self.calls: list[str] = []
        # Steps that run beside others (their order against them is not fixed) are kept apart.
        self.side_calls: list[str] = []
        self.calls_at_side = 0

    def _do(self, name: str, side: bool = False) -> None:
        (self.side_calls if side else self.calls).append(name)
        if side:
            self.calls_at_side = len(self.calls)
        if name == self.fail_at:
            raise ApplicationError(f"{name} refused", type="hypervisor_error", non_retryable=True)

    def activities(self):
        @activity.defn(name="scheduler.place")
        async def place(req: PlacementRequest) -> Placement:
            self._do("place")
            return Placement(req.vm_id, "h1", "qemu")

        @activity.defn(name="scheduler.release")
        async def release(req: ClaimRelease) -> None:
            self._do("release")

        @activity.defn(name="storage.create_volume")
        async def create_volume(req: VolumeRequest) -> Volume:
            self._do("create_volume")
            return Volume("v", "/v.qcow2", 1, IMAGE)

        @activity.defn(name="storage.delete_volume")
        async def delete_volume(ref: VolumeRef) -> None:
            self._do("delete_volume")

        @activity.defn(name="host.define_domain")
        async def define(spec: DomainSpec) -> None:
            self._do("define")

        @activity.defn(name="host.start_domain")
        async def start(ref: DomainRef) -> None:
            self._do("start")

        @activity.defn(name="host.create_domain")
        async def create(spec: DomainSpec) -> None:
            self._do("define")
            self._do("start")

        @activity.defn(name="host.undefine_domain")
        async def undefine(ref: DomainRef) -> None:
            self._do("undefine")

        @activity.defn(name="host.wait_booted")
        async def wait_booted(req: BootWaitRequest) -> DomainStatus:
            self._do("wait_booted")
            return DomainStatus(req.vm_id, "running", 1)

        @activity.defn(name="host.domain_status")
        async def domain_status(req: BootWaitRequest) -> DomainStatus:
            self._do("domain_status")
            return DomainStatus(req.vm_id, "running", 1)

        @activity.defn(name="host.stop_domain")
        async def stop(req: StopRequest) -> DomainStatus:
            self._do("stop")
            return DomainStatus(req.vm_id, "shutoff", 1)

        @activity.defn(name="host.reboot_domain")
        async def reboot(req: StopRequest) -> DomainStatus:
            self._do("reboot")
            return DomainStatus(req.vm_id, "running", 1)

        @activity.defn(name="inventory.update_vm")
        async def update_vm(update: VmRecordUpdate) -> None:
            self._do(f"record:{update.step}")

        @activity.defn(name="inventory.forget_vm")
        async def forget_vm(ref: VmRef) -> None:
            self._do("forget")

        @activity.defn(name="inventory.vm_setup")
        async def vm_setup(req: VmSetupRequest) -> VmSetup:
            self._do("vm_setup", side=True)
            return VmSetup(req.vm_id, (NIC,), (NETWORK,), SeedSpec(req.vm_id, "web"))

        @activity.defn(name="host.prepare_vm")
        async def prepare_vm(setup: VmSetup) -> None:
            assert setup.nics == (NIC,)
            self._do("prepare", side=True)

        @activity.defn(name="host.release_vm")
        async def release_vm(release: VmRelease) -> None:
            self._do("release_host")

        return {
            ORCHESTRATOR_QUEUE: [place, release],
            STORAGE_QUEUE: [create_volume, delete_volume],
            host_queue("h1"): [define, start, create, undefine, wait_booted, domain_status, stop, reboot, prepare_vm,
                               release_vm],
            INVENTORY_QUEUE: [update_vm, forget_vm, vm_setup],
        }


async def run_with(env: WorkflowEnvironment, world: World, workflow_cls, arg, workflow_id: str):
    workers = []
    for queue, acts in world.activities().items():
        workflows = [ProvisionVm, DeleteVm, VmPowerAction] if queue == ORCHESTRATOR_QUEUE else []
        workers.append(Worker(env.client, task_queue=queue, activities=acts, workflows=workflows))
    async with workers[0], workers[1], workers[2], workers[3]:
        return await env.client.execute_workflow(
            workflow_cls.run, arg, id=workflow_id, task_queue=ORCHESTRATOR_QUEUE,
            execution_timeout=timedelta(seconds=60), id_reuse_policy=PROVISION_ID_REUSE,
        )


def provision_input() -> ProvisionInput:
    return ProvisionInput(str(uuid.uuid4()), "web", "default", VmSpec(1, 128, 1, "img"))


async def test_provision_happy_path_runs_every_step_once(env):
    world = World()
    inp = provision_input()
    assert await run_with(env, world, ProvisionVm, inp, f"vm-{inp.vm_id}-provision") == "h1"
    # Where the VM goes is recorded while its disk is made: those two in either order.
    assert world.calls[0] == "place" and set(world.calls[1:3]) == {"record:create_volume", "create_volume"}
    assert world.calls[3:] == ["define", "start", "wait_booted", "record:succeeded"]
    # The host's side of the guest (NICs, seed) is ready before the domain is defined.
    assert world.side_calls == ["vm_setup", "prepare"]
    assert world.calls_at_side <= world.calls.index("define")


@pytest.mark.parametrize(
    ("fail_at", "undo"),
    [
        ("place", ["release"]),
        ("create_volume", ["release_host", "delete_volume", "release"]),
        ("define", ["undefine", "release_host", "delete_volume", "release"]),
        ("start", ["undefine", "release_host", "delete_volume", "release"]),
        ("wait_booted", ["undefine", "release_host", "delete_volume", "release"]),
    ],
)
async def test_provision_failure_undoes_earlier_steps_in_reverse(env, fail_at, undo):
    world = World(fail_at)
    inp = provision_input()
    with pytest.raises(WorkflowFailureError) as caught:
        await run_with(env, world, ProvisionVm, inp, f"vm-{inp.vm_id}-provision")
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "hypervisor_error"
    step = "start" if fail_at == "define" else fail_at  # one step defines and starts the domain
    assert cause.message == f"{step}: {fail_at} refused"
    failed_at = world.calls.index(fail_at)
    # The record of the chosen host is written beside the disk: it may land after a failure there.
    assert [c for c in world.calls[failed_at + 1:] if c != "record:create_volume"] == [*undo, "forget"]


async def test_same_workflow_id_cannot_start_twice(env):
    world = World()
    inp = provision_input()
    await run_with(env, world, ProvisionVm, inp, f"vm-{inp.vm_id}-provision")
    with pytest.raises(WorkflowAlreadyStartedError):
        await env.client.start_workflow(ProvisionVm.run, inp, id=f"vm-{inp.vm_id}-provision",
                                        task_queue=ORCHESTRATOR_QUEUE, id_reuse_policy=PROVISION_ID_REUSE)


async def test_delete_runs_every_step_and_marks_error_on_failure(env):
    world = World()
    vm_id = str(uuid.uuid4())
    await run_with(env, world, DeleteVm, DeleteInput(vm_id, "default", "h1"), f"vm-{vm_id}-delete")
    assert world.calls == ["record:deleting", "undefine", "release_host", "delete_volume", "release", "forget"]

    failing = World("delete_volume")
    with pytest.raises(WorkflowFailureError):
        await run_with(env, failing, DeleteVm, DeleteInput(vm_id, "default", "h1"), f"vm-{vm_id}-delete2")
    assert failing.calls[-1] == "record:failed"


@pytest.mark.parametrize(
    ("action", "calls", "result"),
    [
        (PowerAction.STOP, ["domain_status", "stop"], "stopped"),
        (PowerAction.START, ["domain_status", "start", "wait_booted"], "running"),
        (PowerAction.REBOOT, ["domain_status", "reboot", "wait_booted"], "running"),
    ],
)
async def test_power_actions(env, action, calls, result):
    world = World()
    vm_id = str(uuid.uuid4())
    inp = PowerInput(vm_id, "default", action, "h1", "BOOTED", timeout_s=1)
    assert await run_with(env, world, VmPowerAction, inp, f"vm-{vm_id}-{action.value}-1") == result
    assert world.calls == [f"record:{action.value}", *calls, "record:succeeded"]


async def test_failed_power_action_marks_the_vm_in_error(env):
    world = World("reboot")
    vm_id = str(uuid.uuid4())
    inp = PowerInput(vm_id, "default", PowerAction.REBOOT, "h1", "BOOTED", timeout_s=1)
    with pytest.raises(WorkflowFailureError):
        await run_with(env, world, VmPowerAction, inp, f"vm-{vm_id}-reboot-1")
    assert world.calls[-1] == "record:failed"
