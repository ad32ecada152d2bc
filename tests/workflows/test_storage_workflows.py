"""Storage workflows against the real Temporal dev server, with recording stand-ins for the
activities: attach undoes its claim (and any half attach) when the host refuses, every
operation reports its outcome, and a failure carries the step's code and message."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from shared.names import ORCHESTRATOR_QUEUE, STORAGE_QUEUE, host_queue
from shared.storage_models import (
    AttachmentClaim,
    AttachmentInput,
    DiskAttachment,
    OperationReport,
    SnapshotInput,
    SnapshotRequest,
    SnapshotView,
    VolumeKind,
    VolumeView,
)
from workflows.storage_ops import (
    STORAGE_WORKFLOWS,
    AttachVolume,
    DetachVolume,
    RevertSnapshot,
)

VM_ID = str(uuid.uuid4())
VOLUME = VolumeView("d1", "shared", "/pool/volumes/d1.qcow2", VolumeKind.DATA, 1.0, 0)


class World:
    def __init__(self, fail_at: str | None = None, code: str = "hypervisor_error") -> None:
        self.fail_at, self.code = fail_at, code
        self.calls: list[str] = []
        self.reports: list[OperationReport] = []

    def _do(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_at:
            raise ApplicationError(f"{name} refused", type=self.code, non_retryable=True)

    def activities(self) -> dict[str, list]:
        @activity.defn(name="storage.claim_volume")
        async def claim(c: AttachmentClaim) -> VolumeView:
            self._do("claim")
            return VOLUME

        @activity.defn(name="storage.confirm_attachment")
        async def confirm(c: AttachmentClaim) -> None:
            self._do("confirm")

        @activity.defn(name="storage.release_volume")
        async def release(c: AttachmentClaim) -> None:
            self._do("release")

        @activity.defn(name="storage.revert_snapshot")
        async def revert(r: SnapshotRequest) -> None:
            self._do("revert")

        @activity.defn(name="storage.create_snapshot")
        async def snapshot(r: SnapshotRequest) -> SnapshotView:
            self._do("snapshot")
            return SnapshotView(r.name, 0.0, ("root",))

        @activity.defn(name="storage.report_operation")
        async def report(r: OperationReport) -> None:
            self.reports.append(r)
            if self.fail_at == "report":
                raise ApplicationError("NATS is down", type="service_unavailable", non_retryable=True)

        @activity.defn(name="host.attach_disk")
        async def attach(d: DiskAttachment) -> str:
            self._do("attach")
            return "vdb"

        @activity.defn(name="host.detach_disk")
        async def detach(d: DiskAttachment) -> None:
            self._do("detach")

        return {
            STORAGE_QUEUE: [claim, confirm, release, revert, snapshot, report],
            host_queue("h1"): [attach, detach],
        }


async def run_with(env, world: World, workflow, arg):
    acts = world.activities()
    async with (
        Worker(env.client, task_queue=ORCHESTRATOR_QUEUE, workflows=STORAGE_WORKFLOWS),
        Worker(env.client, task_queue=STORAGE_QUEUE, activities=acts[STORAGE_QUEUE]),
        Worker(env.client, task_queue=host_queue("h1"), activities=acts[host_queue("h1")]),
    ):
        return await env.client.execute_workflow(
            workflow.run, arg, id=f"volume-d1-test-{uuid.uuid4().hex[:8]}", task_queue=ORCHESTRATOR_QUEUE,
            execution_timeout=timedelta(seconds=60),
        )


ATTACH = AttachmentInput("default", "d1", VM_ID, "h1")


async def test_attach_claims_attaches_confirms_and_reports(env):
    world = World()
    assert await run_with(env, world, AttachVolume, ATTACH) == "vdb"
    assert world.calls == ["claim", "attach", "confirm"]
    (report,) = world.reports
    assert (report.outcome, report.kind, report.target, report.vm_id) == ("succeeded", "volume-attach", "volume/d1",
                                                                           VM_ID)


@pytest.mark.parametrize(
    ("fail_at", "undone"),
    [("claim", ["release"]), ("attach", ["detach", "release"]), ("confirm", ["detach", "release"])],
)
async def test_a_failed_attach_undoes_what_it_did(env, fail_at, undone):
    world = World(fail_at)
    with pytest.raises(WorkflowFailureError) as caught:
        await run_with(env, world, AttachVolume, ATTACH)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "hypervisor_error"
    assert cause.message == f"{fail_at}: {fail_at} refused"
    done = world.calls[: world.calls.index(fail_at) + 1]
    assert world.calls == done + undone
    assert [r.outcome for r in world.reports] == ["failed"]
    assert world.reports[0].error == f"{fail_at}: {fail_at} refused"


async def test_detach_without_a_host_only_releases(env):
    world = World()
    assert await run_with(env, world, DetachVolume, AttachmentInput("default", "d1", VM_ID, "")) == "d1"
    assert world.calls == ["release"]
    world = World()
    await run_with(env, world, DetachVolume, ATTACH)
    assert world.calls == ["detach", "release"]


async def test_a_conflict_keeps_its_code(env):
    world = World("revert", code="conflict")
    with pytest.raises(WorkflowFailureError) as caught:
        await run_with(env, world, RevertSnapshot, SnapshotInput("default", VM_ID, "s1"))
    assert caught.value.cause.type == "conflict"
    assert world.reports[0].outcome == "failed" and world.reports[0].kind == "snapshot-revert"


async def test_an_outcome_that_cannot_be_published_does_not_fail_the_operation(env):
    world = World("report")
    assert await run_with(env, world, AttachVolume, ATTACH) == "vdb"
    assert world.calls == ["claim", "attach", "confirm"] and len(world.reports) == 1
