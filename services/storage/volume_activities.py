"""Temporal activities on data volumes and on snapshots of a VM's disks, on the task queue
``storage``. Each is idempotent and publishes ``vmflow.evt.volume.<pool>.<volume>.<type>``
when it changed something; event ids derive from the operation, so a retry is stored once.
"""

from __future__ import annotations

from temporalio import activity

from services.storage.data_volumes import VolumeStore
from services.storage.image_activities import operation_key
from services.storage.snapshots import VmSnapshots
from shared import codec, subjects
from shared.messaging import EventPublisher
from shared.storage_models import (
    AttachmentClaim,
    OperationReport,
    SnapshotRequest,
    SnapshotView,
    VolumeCreateRequest,
    VolumeDeleteRequest,
    VolumeResizeRequest,
    VolumeView,
    volume_event,
)


class VolumeActivities:
    def __init__(self, volumes: VolumeStore, snapshots: VmSnapshots, events: EventPublisher) -> None:
        self._volumes = volumes
        self._snapshots = snapshots
        self._events = events

    async def _publish(self, volume: VolumeView, event_type: str, extra: dict | None = None) -> None:
        await self._events.publish(
            volume_event(volume.pool, volume.name, event_type),
            {**codec.to_jsonable(volume), "operation_id": activity.info().workflow_id, **(extra or {})},
            event_id=f"{operation_key()}-{volume.name}-{event_type}",
        )

    @activity.defn(name="storage.create_data_volume")
    async def create_data_volume(self, req: VolumeCreateRequest) -> VolumeView:
        """Empty, thin clone or full copy of an image. Raises InvalidRequest, NotFound, Conflict."""
        volume, created = await self._volumes.create(req, operation_key(), activity.heartbeat)
        if created:
            await self._publish(volume, "created")
        return volume

    @activity.defn(name="storage.resize_volume")
    async def resize_volume(self, req: VolumeResizeRequest) -> VolumeView:
        """Grow only. Raises InvalidRequest for a shrink, Conflict while a guest uses it."""
        volume, changed = await self._volumes.resize(req)
        if changed:
            await self._publish(volume, "resized")
        return volume

    @activity.defn(name="storage.delete_data_volume")
    async def delete_data_volume(self, req: VolumeDeleteRequest) -> None:
        """Absent is fine. Raises Conflict while attached."""
        volume = await self._volumes.delete(req)
        if volume is not None:
            await self._publish(volume, "deleted")

    @activity.defn(name="storage.claim_volume")
    async def claim_volume(self, claim: AttachmentClaim) -> VolumeView:
        """Reserve the volume for the VM, before the host attaches it: no other VM can then
        take it. Raises NotFound, or Conflict if another VM holds it."""
        return await self._volumes.claim(claim)

    @activity.defn(name="storage.confirm_attachment")
    async def confirm_attachment(self, claim: AttachmentClaim) -> None:
        """Announce that the host attached the claimed volume (publishes ``attached``)."""
        await self._publish(self._volumes.view(claim.volume), "attached", {"vm_id": claim.vm_id})

    @activity.defn(name="storage.release_volume")
    async def release_volume(self, claim: AttachmentClaim) -> None:
        """Forget the attachment (after the host detached it, or to undo a failed attach)."""
        if await self._volumes.release(claim):
            volume = self._volumes.view(claim.volume)
            await self._publish(volume, "detached", {"vm_id": claim.vm_id})

    async def _publish_disks(self, req: SnapshotRequest, disks: list[str], event_type: str) -> None:
        for disk in disks:
            await self._publish(self._volumes.view(disk), event_type, {"vm_id": req.vm_id, "snapshot": req.name})

    @activity.defn(name="storage.create_snapshot")
    async def create_snapshot(self, req: SnapshotRequest) -> SnapshotView:
        """On every disk of the stopped VM. Raises NotFound, Conflict while it runs."""
        snapshot, taken = await self._snapshots.create(req.vm_id, req.name)
        await self._publish_disks(req, taken, "snapshot_created")
        return snapshot

    @activity.defn(name="storage.revert_snapshot")
    async def revert_snapshot(self, req: SnapshotRequest) -> None:
        """Raises NotFound, Conflict while the VM runs."""
        await self._publish_disks(req, await self._snapshots.revert(req.vm_id, req.name), "snapshot_reverted")

    @activity.defn(name="storage.delete_snapshot")
    async def delete_snapshot(self, req: SnapshotRequest) -> None:
        """Absent is fine. Raises Conflict while the VM runs."""
        await self._publish_disks(req, await self._snapshots.delete(req.vm_id, req.name), "snapshot_deleted")

    @activity.defn(name="storage.report_operation")
    async def report_operation(self, report: OperationReport) -> None:
        """Publish the outcome of a storage operation for SSE clients and audit."""
        await self._events.publish(
            # Older image names may hold dots, which NATS reads as token separators.
            subjects.op_event(report.tenant, report.op_id.replace(".", "_"), report.outcome),
            codec.to_jsonable(report),
            event_id=f"{operation_key()}-{report.outcome}",
        )
