"""Temporal activities of the storage service, on the task queue ``storage``."""

from __future__ import annotations

from temporalio import activity

from services.storage.volumes import VolumePool, root_volume_name
from shared import codec, subjects
from shared.messaging import EventPublisher
from shared.models import Volume, VolumeRef, VolumeRequest


class StorageActivities:
    def __init__(self, pool: VolumePool, events: EventPublisher) -> None:
        self._pool = pool
        self._events = events

    @activity.defn(name="storage.create_volume")
    async def create_volume(self, req: VolumeRequest) -> Volume:
        """Idempotent. Raises NotFound for an unknown image, StorageError if qemu-img fails."""
        volume, created = await self._pool.create_root(req)
        if created:
            await self._events.publish(
                subjects.volume_event(self._pool.name, volume.name, "created"),
                {"vm_id": req.vm_id, **codec.to_jsonable(volume)},
                event_id=f"{volume.name}-created",
            )
        return volume

    @activity.defn(name="storage.delete_volume")
    async def delete_volume(self, ref: VolumeRef) -> None:
        """Idempotent: a volume that is already gone is fine."""
        if await self._pool.delete_root(ref.vm_id):
            volume_name = root_volume_name(ref.vm_id)
            await self._events.publish(
                subjects.volume_event(self._pool.name, volume_name, "deleted"),
                {"vm_id": ref.vm_id, "volume": volume_name},
            )
