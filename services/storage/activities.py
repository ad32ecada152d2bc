"""Temporal activities on VMs' root volumes, on the task queue ``storage``."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from temporalio import activity

from services.storage.data_volumes import VolumeStore
from services.storage.image_activities import operation_key
from services.storage.volumes import RootVolumes, root_volume_name
from shared import codec, subjects
from shared.messaging import EventPublisher
from shared.models import (
    RootCopy,
    RootDisk,
    RootDiskRef,
    Volume,
    VolumeRef,
    VolumeRequest,
)
from shared.units import MIB


async def locate_root(roots: RootVolumes, volumes: VolumeStore, vm_id: str) -> RootDisk:
    """Where the VM's root volume is, and which of its data volumes are on a host's own pool.
    Raises NotFound when no pool holds the root volume."""
    root = roots.describe(vm_id)
    attached = await asyncio.to_thread(volumes.attached_to, vm_id)
    return replace(root, local_data_volumes=tuple(v.name for v in attached if v.host_id))


class StorageActivities:
    def __init__(self, roots: RootVolumes, volumes: VolumeStore, events: EventPublisher) -> None:
        self._roots = roots
        self._volumes = volumes
        self._events = events

    async def _publish(self, pool: str, vm_id: str, event_type: str, body: dict) -> None:
        volume_name = root_volume_name(vm_id)
        await self._events.publish(
            subjects.volume_event(pool, volume_name, event_type),
            {"vm_id": vm_id, "volume": volume_name, "pool": pool, **body},
            event_id=f"{operation_key()}-{pool}-{volume_name}-{event_type}",
        )

    @activity.defn(name="storage.create_volume")
    async def create_volume(self, req: VolumeRequest) -> Volume:
        """Idempotent. Raises InvalidRequest for an unknown pool, NotFound for an unknown image,
        StorageError if qemu-img fails."""
        volume, created = await self._roots.create(req)
        if created:
            await self._publish(volume.pool, req.vm_id, "created", codec.to_jsonable(volume))
        return volume

    @activity.defn(name="storage.delete_volume")
    async def delete_volume(self, ref: VolumeRef) -> None:
        """Remove the VM's root volume from every pool. Idempotent: one already gone is fine."""
        for pool in await self._roots.delete(ref.vm_id):
            await self._publish(pool, ref.vm_id, "deleted", {})

    @activity.defn(name="storage.locate_root")
    async def locate_root(self, ref: VolumeRef) -> RootDisk:
        """Where the VM's root volume is (``locate_root``)."""
        return await locate_root(self._roots, self._volumes, ref.vm_id)

    @activity.defn(name="storage.copy_root")
    async def copy_root(self, req: RootCopy) -> RootDisk:
        """Copy the stopped VM's root volume into ``req.to_pool`` (a cold migration to a host
        with its own disks), heartbeating the MiB copied. Idempotent."""
        def report(copied_bytes: int, total_bytes: int) -> None:
            activity.heartbeat({"copied_mib": copied_bytes // MIB, "total_mib": total_bytes // MIB})

        copy, created = await self._roots.copy_to(req.vm_id, req.from_pool, req.to_pool, report)
        if created:
            await self._publish(copy.pool, req.vm_id, "created", {"path": copy.path, "copied": True})
        return copy

    @activity.defn(name="storage.prepare_root")
    async def prepare_root(self, req: RootCopy) -> RootDisk:
        """An empty overlay in ``req.to_pool`` for a live migration to fill (made anew on a
        retry). Raises Conflict when the root volume has snapshots."""
        copy = await self._roots.prepare_in(req.vm_id, req.from_pool, req.to_pool)
        await self._publish(copy.pool, req.vm_id, "created", {"path": copy.path, "copied": False})
        return copy

    @activity.defn(name="storage.drop_root")
    async def drop_root(self, ref: RootDiskRef) -> None:
        """Remove the VM's root volume from ``ref.pool`` only (the copy a move left behind, or
        one it abandoned). Absent is fine."""
        for pool in await self._roots.delete(ref.vm_id, ref.pool):
            await self._publish(pool, ref.vm_id, "deleted", {})
