"""Temporal activities that change the image catalog, on the task queue ``storage``.

Each is idempotent for its operation (the workflow id) and publishes
``vmflow.evt.image.<pool>.<image>.<type>`` when it changed something.
"""

from __future__ import annotations

from pathlib import Path

from temporalio import activity

from services.storage.data_volumes import VolumeStore
from services.storage.images import ImageStore
from shared import codec
from shared.messaging import EventPublisher
from shared.storage_models import (
    ImageView,
    ImportRequest,
    NameRef,
    TemplateRequest,
    image_event,
)


def operation_key() -> str:
    """Identifies this run of the operation: a retried activity gets the same key, a later
    operation reusing the workflow id (same image or volume name) a new one."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}"


class ImageActivities:
    def __init__(self, pool_name: str, images: ImageStore, volumes: VolumeStore,
                 root_disk_of, events: EventPublisher) -> None:
        self._pool_name = pool_name
        self._images = images
        self._volumes = volumes
        self._root_disk_of = root_disk_of
        self._events = events

    async def _published(self, view: ImageView, event_type: str, extra: dict | None = None) -> ImageView:
        await self._events.publish(
            image_event(self._pool_name, view.name, event_type),
            {**codec.to_jsonable(view), "operation_id": activity.info().workflow_id, **(extra or {})},
            event_id=f"{operation_key()}-{event_type}",
        )
        return view

    @activity.defn(name="storage.import_image")
    async def import_image(self, req: ImportRequest) -> ImageView:
        """Check and convert the file into a qcow2 image. Raises InvalidRequest, Conflict."""
        view, created = await self._images.import_image(req, operation_key(), on_wait=activity.heartbeat)
        return await self._published(view, "created") if created else view

    @activity.defn(name="storage.create_template")
    async def create_template(self, req: TemplateRequest) -> ImageView:
        """Flatten the stopped VM's root disk into an image. Raises Conflict while it runs."""
        root: Path = self._root_disk_of(req.vm_id)
        view, created = await self._images.create_template(req, root, operation_key(), activity.heartbeat)
        return await self._published(view, "created", {"source_vm": req.vm_id}) if created else view

    @activity.defn(name="storage.delete_image")
    async def delete_image(self, ref: NameRef) -> None:
        """Absent is fine. Raises Conflict while a volume is backed by the image."""
        view = await self._images.delete(ref.name, self._volumes.backed_by)
        if view is not None:
            await self._published(view, "deleted")
