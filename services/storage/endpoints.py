"""The storage service's NATS endpoints (``vmflow.storage.<name>``): reads that answer at once,
and the checks the API runs before it starts an operation, so bad input is refused with a
4xx before anything changes. Activities run the same checks again when they act."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.micro.service import EndpointConfig, Service

from services.storage.catalog import ImageCatalog
from services.storage.data_volumes import VolumeStore
from services.storage.images import ImageStore
from services.storage.pools import PoolRegistry, pool_view
from services.storage.snapshots import VmSnapshots
from shared import subjects
from shared.messaging import endpoint
from shared.models import Image, ImageList, ImageRef, RootDisk, VolumeRef
from shared.storage_models import (
    ImageUsage,
    ImageView,
    ImageViewList,
    ImportRequest,
    NameRef,
    PoolList,
    SnapshotList,
    TemplateRequest,
    VmDisksRef,
    VolumeCreateRequest,
    VolumeList,
    VolumeView,
)


class StorageEndpoints:
    def __init__(self, pools: PoolRegistry, catalog: ImageCatalog, images: ImageStore,
                 volumes: VolumeStore, snapshots: VmSnapshots, root_disk_of: Callable[[str], Path],
                 locate_root: Callable[[str], Awaitable[RootDisk]]) -> None:
        self._locate_root = locate_root
        self._pools = pools
        self._catalog = catalog
        self._images = images
        self._volumes = volumes
        self._snapshots = snapshots
        self._root_disk_of = root_disk_of

    def handlers(self) -> dict[str, tuple[type, Callable[[Any], Awaitable[Any]]]]:
        return {
            "images": (type(None), self.images),
            "image": (ImageRef, self.image),
            "image_views": (type(None), self.image_views),
            "image_view": (NameRef, self.image_view),
            "image_usage": (NameRef, self.image_usage),
            "check_import": (ImportRequest, self._images.check_import),
            "check_template": (TemplateRequest, self.check_template),
            "pools": (type(None), self.pools),
            "volumes": (type(None), self.volumes),
            "volume": (NameRef, self.volume),
            "check_volume": (VolumeCreateRequest, self.check_volume),
            "snapshots": (VmDisksRef, self.snapshots),
            "root_disk": (VolumeRef, self.root_disk),
        }

    async def register(self, service: Service) -> None:
        group = service.add_group(name=subjects.STORAGE_PREFIX)
        for name, (request_type, handler) in self.handlers().items():
            await group.add_endpoint(EndpointConfig(name=name, handler=endpoint(request_type, handler)))

    async def root_disk(self, ref: VolumeRef) -> RootDisk:
        """Where the VM's root volume is now (the API reads it with a migration request)."""
        return await self._locate_root(ref.vm_id)

    async def images(self, _: None) -> ImageList:
        return ImageList(tuple(await asyncio.to_thread(self._catalog.list)))

    async def image(self, ref: ImageRef) -> Image:
        return await asyncio.to_thread(self._catalog.get, ref.name)

    async def image_views(self, _: None) -> ImageViewList:
        return ImageViewList(tuple(await asyncio.to_thread(self._images.views)))

    async def image_view(self, ref: NameRef) -> ImageView:
        return await asyncio.to_thread(self._images.view, ref.name)

    async def image_usage(self, ref: NameRef) -> ImageUsage:
        view = await asyncio.to_thread(self._images.view, ref.name)
        return ImageUsage(view.name, tuple(await asyncio.to_thread(self._volumes.backed_by, view.disk_path)))

    async def check_template(self, req: TemplateRequest) -> NameRef:
        await asyncio.to_thread(self._images.check_template, req, self._root_disk_of(req.vm_id))
        return NameRef(req.name)

    async def pools(self, _: None) -> PoolList:
        def gather() -> PoolList:
            volumes = self._volumes.list()
            views = []
            for pool in self._pools.all():
                count = sum(1 for v in volumes if v.pool == pool.name)
                images = len(list(pool.images_dir.glob("*/image.json")))
                views.append(pool_view(pool, count, images))
            return PoolList(tuple(views))

        return await asyncio.to_thread(gather)

    async def volumes(self, _: None) -> VolumeList:
        return VolumeList(tuple(await asyncio.to_thread(self._volumes.list)))

    async def volume(self, ref: NameRef) -> VolumeView:
        return await asyncio.to_thread(self._volumes.view, ref.name)

    async def check_volume(self, req: VolumeCreateRequest) -> NameRef:
        await asyncio.to_thread(self._volumes.check_create, req)
        return NameRef(req.name)

    async def snapshots(self, ref: VmDisksRef) -> SnapshotList:
        return await self._snapshots.list(ref.vm_id)
