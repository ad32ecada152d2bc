"""Storage operations: images (import, template, delete), volumes (create, resize, delete,
attach, detach) and snapshots of a VM's disks (take, revert, delete).

Each is a short workflow over idempotent activities; the API checks the request first, and the
activities check again when they act. Every operation reports its outcome as an op event and
fails with the failing step's code and message. Workflow ids (= operation ids):
``image-<name>-<action>``, ``volume-<name>-<action>[-<8 hex>]``, ``vm-<vm_id>-<action>-<8 hex>``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.models import OperationProgress
    from shared.quota import HoldChanges, QuotaSettlement
    from shared.storage_models import (
        AttachmentClaim,
        AttachmentInput,
        CreateVolumeInput,
        DeleteImageInput,
        DeleteVolumeInput,
        DiskAttachment,
        ImportImageInput,
        OperationReport,
        ResizeVolumeInput,
        SnapshotInput,
        SnapshotRequest,
        TemplateInput,
    )

from workflows import steps, storage_steps
from workflows.progress import ProgressTracker
from workflows.saga import Saga


class StorageOperation:
    """What every storage workflow shares: the progress query and the outcome handling."""

    kind = "storage"

    def __init__(self) -> None:
        self._progress = ProgressTracker(self.kind)

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    async def _run(self, tenant: str, target: str, body: Callable[[], Awaitable[str]],
                   vm_id: str | None = None, host_id: str | None = None,
                   quota: QuotaSettlement | None = None) -> str:
        """Run ``body``; settle the quota holds the API reserved; report success or failure.
        Returns what ``body`` returns."""
        op_id = workflow.info().workflow_id
        self._progress.begin(vm_id or "", host_id)
        try:
            result = await body()
        except BaseException as exc:
            code, message = steps.failure_message(exc)
            error = f"{self._progress.step}: {message}"
            self._progress.advance("failed")
            if quota is not None and quota.release_on_failure:
                await steps.settle_quota(HoldChanges(release=quota.release_on_failure))
            await self._report(OperationReport(tenant, op_id, self.kind, "failed", target, vm_id, error))
            raise ApplicationError(error, type=code, non_retryable=True) from None
        if quota is not None:
            await steps.settle_quota(HoldChanges(quota.commit_on_success, quota.release_on_success))
        self._progress.advance("done")
        await self._report(OperationReport(tenant, op_id, self.kind, "succeeded", target, vm_id))
        return result

    async def _report(self, outcome: OperationReport) -> None:
        # The outcome event is a courtesy to subscribers; Temporal holds the truth, so an event
        # that cannot be published never turns a finished operation into a failed one.
        try:
            await storage_steps.report(outcome)
        except Exception as exc:
            workflow.logger.warning("operation %s: outcome not published: %s", outcome.op_id, exc)


@workflow.defn(name="ImportImage")
class ImportImage(StorageOperation):
    kind = "image-import"

    @workflow.run
    async def run(self, inp: ImportImageInput) -> str:
        async def body() -> str:
            self._progress.advance("import")
            return (await storage_steps.import_image(inp.request)).name

        return await self._run(inp.tenant, f"image/{inp.request.name}", body, quota=inp.quota)


@workflow.defn(name="CreateTemplate")
class CreateTemplate(StorageOperation):
    kind = "image-template"

    @workflow.run
    async def run(self, inp: TemplateInput) -> str:
        async def body() -> str:
            self._progress.advance("flatten")
            return (await storage_steps.create_template(inp.request)).name

        return await self._run(inp.tenant, f"image/{inp.request.name}", body, vm_id=inp.request.vm_id, quota=inp.quota)


@workflow.defn(name="DeleteImage")
class DeleteImage(StorageOperation):
    kind = "image-delete"

    @workflow.run
    async def run(self, inp: DeleteImageInput) -> str:
        async def body() -> str:
            self._progress.advance("delete")
            await storage_steps.delete_image(inp.name)
            return inp.name

        return await self._run(inp.tenant, f"image/{inp.name}", body, quota=inp.quota)


@workflow.defn(name="CreateVolume")
class CreateVolume(StorageOperation):
    kind = "volume-create"

    @workflow.run
    async def run(self, inp: CreateVolumeInput) -> str:
        async def body() -> str:
            self._progress.advance("create")
            return (await storage_steps.create_data_volume(inp.request)).name

        return await self._run(inp.tenant, f"volume/{inp.request.name}", body, quota=inp.quota)


@workflow.defn(name="ResizeVolume")
class ResizeVolume(StorageOperation):
    kind = "volume-resize"

    @workflow.run
    async def run(self, inp: ResizeVolumeInput) -> str:
        async def body() -> str:
            self._progress.advance("resize")
            return f"{(await storage_steps.resize_volume(inp.request)).size_gib:g}"

        return await self._run(inp.tenant, f"volume/{inp.request.name}", body, quota=inp.quota)


@workflow.defn(name="DeleteVolume")
class DeleteVolume(StorageOperation):
    kind = "volume-delete"

    @workflow.run
    async def run(self, inp: DeleteVolumeInput) -> str:
        async def body() -> str:
            self._progress.advance("delete")
            await storage_steps.delete_data_volume(inp.request)
            return inp.request.name

        return await self._run(inp.tenant, f"volume/{inp.request.name}", body, quota=inp.quota)


@workflow.defn(name="AttachVolume")
class AttachVolume(StorageOperation):
    kind = "volume-attach"

    @workflow.run
    async def run(self, inp: AttachmentInput) -> str:
        """Claim the volume for the VM, then attach it on the VM's host. A failure undoes both.
        Returns the disk's target on the guest (vdb, ...)."""
        claim = AttachmentClaim(inp.volume, inp.vm_id, inp.stale_attachment, inp.host_id)

        async def body() -> str:
            saga = Saga()
            try:
                self._progress.advance("claim")
                saga.on_failure("release claim", lambda: storage_steps.release_volume(claim))
                volume = await storage_steps.claim_volume(claim)
                self._progress.advance("attach")
                disk = DiskAttachment(inp.vm_id, volume.path, inp.timeout_s)
                saga.on_failure("detach disk", lambda: storage_steps.detach_disk(inp.host_id, disk))
                target = await storage_steps.attach_disk(inp.host_id, disk)
                self._progress.advance("confirm")
                await storage_steps.confirm_attachment(claim)
                return target
            except BaseException:
                await saga.compensate()
                raise

        return await self._run(inp.tenant, f"volume/{inp.volume}", body, inp.vm_id, inp.host_id)


@workflow.defn(name="DetachVolume")
class DetachVolume(StorageOperation):
    kind = "volume-detach"

    @workflow.run
    async def run(self, inp: AttachmentInput) -> str:
        """Detach on the host (waiting for a running guest to let go), then release the claim.
        Without a host (the VM is gone) only the claim is released."""

        async def body() -> str:
            if inp.host_id:
                self._progress.advance("detach")
                disk = DiskAttachment(inp.vm_id, inp.disk_path, inp.timeout_s)
                await storage_steps.detach_disk(inp.host_id, disk)
            self._progress.advance("release")
            await storage_steps.release_volume(AttachmentClaim(inp.volume, inp.vm_id))
            return inp.volume

        return await self._run(inp.tenant, f"volume/{inp.volume}", body, inp.vm_id, inp.host_id)


@workflow.defn(name="CreateSnapshot")
class CreateSnapshot(StorageOperation):
    kind = "snapshot-create"

    @workflow.run
    async def run(self, inp: SnapshotInput) -> str:
        async def body() -> str:
            self._progress.advance("snapshot")
            return (await storage_steps.create_snapshot(SnapshotRequest(inp.vm_id, inp.name))).name

        return await self._run(inp.tenant, f"snapshot/{inp.name}", body, inp.vm_id, quota=inp.quota)


@workflow.defn(name="RevertSnapshot")
class RevertSnapshot(StorageOperation):
    kind = "snapshot-revert"

    @workflow.run
    async def run(self, inp: SnapshotInput) -> str:
        async def body() -> str:
            self._progress.advance("revert")
            await storage_steps.revert_snapshot(SnapshotRequest(inp.vm_id, inp.name))
            return inp.name

        return await self._run(inp.tenant, f"snapshot/{inp.name}", body, inp.vm_id, quota=inp.quota)


@workflow.defn(name="DeleteSnapshot")
class DeleteSnapshot(StorageOperation):
    kind = "snapshot-delete"

    @workflow.run
    async def run(self, inp: SnapshotInput) -> str:
        async def body() -> str:
            self._progress.advance("delete")
            await storage_steps.delete_snapshot(SnapshotRequest(inp.vm_id, inp.name))
            return inp.name

        return await self._run(inp.tenant, f"snapshot/{inp.name}", body, inp.vm_id, quota=inp.quota)


STORAGE_WORKFLOWS = [
    ImportImage, CreateTemplate, DeleteImage,
    CreateVolume, ResizeVolume, DeleteVolume, AttachVolume, DetachVolume,
    CreateSnapshot, RevertSnapshot, DeleteSnapshot,
]  # fmt: skip
