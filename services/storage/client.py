"""Asking the storage service over NATS."""

from __future__ import annotations

from typing import Any, TypeVar

from nats.aio.client import Client as NatsClient

from shared import subjects
from shared.messaging import request
from shared.models import Image, ImageList, ImageRef, RootDisk, VolumeRef
from shared.storage_models import (
    ImageUsage,
    ImageView,
    ImageViewList,
    ImportCheck,
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

T = TypeVar("T")


class StorageClient:
    """Every call raises the storage service's own error (NotFound, InvalidRequest, Conflict),
    or ServiceUnavailable / Timeout when it does not answer."""

    def __init__(self, nc: NatsClient, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s

    async def _ask(self, name: str, payload: Any, result_type: type[T], timeout_s: float | None = None) -> T:
        subject = f"{subjects.STORAGE_PREFIX}.{name}"
        return await request(self._nc, subject, payload, result_type, timeout_s or self._timeout_s)

    async def root_disk(self, vm_id: str, timeout_s: float | None = None) -> RootDisk:
        """Where the VM's root volume is. Raises NotFound when no pool holds it."""
        return await self._ask("root_disk", VolumeRef(vm_id), RootDisk, timeout_s)

    async def images(self) -> ImageList:
        return await self._ask("images", None, ImageList)

    async def image(self, name: str) -> Image:
        """Raises NotFound for an unknown image."""
        return await self._ask("image", ImageRef(name), Image)

    async def image_views(self) -> ImageViewList:
        return await self._ask("image_views", None, ImageViewList)

    async def image_view(self, name: str) -> ImageView:
        return await self._ask("image_view", NameRef(name), ImageView)

    async def image_usage(self, name: str) -> ImageUsage:
        return await self._ask("image_usage", NameRef(name), ImageUsage)

    async def check_import(self, req: ImportRequest) -> ImportCheck:
        # qemu-img probes the file: allow it more than a plain read.
        return await self._ask("check_import", req, ImportCheck, max(self._timeout_s, 35.0))

    async def check_template(self, req: TemplateRequest) -> None:
        await self._ask("check_template", req, NameRef)

    async def pools(self) -> PoolList:
        return await self._ask("pools", None, PoolList)

    async def volumes(self) -> VolumeList:
        return await self._ask("volumes", None, VolumeList)

    async def volume(self, name: str) -> VolumeView:
        return await self._ask("volume", NameRef(name), VolumeView)

    async def check_volume(self, req: VolumeCreateRequest) -> None:
        await self._ask("check_volume", req, NameRef)

    async def snapshots(self, vm_id: str) -> SnapshotList:
        return await self._ask("snapshots", VmDisksRef(vm_id), SnapshotList, max(self._timeout_s, 35.0))
