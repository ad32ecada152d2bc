"""Asking the storage service over NATS."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from shared import subjects
from shared.messaging import request
from shared.models import Image, ImageList, ImageRef


class StorageClient:
    def __init__(self, nc: NatsClient, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s

    async def images(self) -> ImageList:
        return await request(self._nc, f"{subjects.STORAGE_PREFIX}.images", None, ImageList, self._timeout_s)

    async def image(self, name: str) -> Image:
        """Raises NotFound for an unknown image."""
        return await request(self._nc, f"{subjects.STORAGE_PREFIX}.image", ImageRef(name), Image, self._timeout_s)
