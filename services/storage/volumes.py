"""Volumes of a directory pool: qcow2 thin clones of images, named after their VM."""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from services.storage import qemu_img
from services.storage.catalog import ImageCatalog
from services.storage.locks import locked, name_lock
from shared.models import Volume, VolumeRequest

log = structlog.get_logger(__name__)


def root_volume_name(vm_id: str) -> str:
    return f"vm-{vm_id}-root"


class VolumePool:
    def __init__(self, name: str, pool_dir: Path, catalog: ImageCatalog) -> None:
        self.name = name
        self._pool_dir = pool_dir
        self._volumes_dir = pool_dir / "volumes"
        self._catalog = catalog

    def path_of(self, volume_name: str) -> Path:
        return self._volumes_dir / f"{volume_name}.qcow2"

    async def create_root(self, req: VolumeRequest) -> tuple[Volume, bool]:
        """Thin clone of the image, grown to ``disk_gib``. Idempotent: an existing volume of that
        VM is returned as is. Returns (volume, created_now)."""
        image = self._catalog.get(req.image)
        name = root_volume_name(req.vm_id)
        path = self.path_of(name)
        size_gib = max(req.disk_gib, image.min_disk_gib)
        volume = Volume(name=name, path=str(path), size_gib=size_gib, image=image)
        if path.exists():
            return volume, False
        self._volumes_dir.mkdir(parents=True, exist_ok=True)
        # Build under a temporary name and rename, so a crash never leaves a half-made volume
        # that a retry would then mistake for a finished one. The image's lock, shared with
        # other clones, keeps the image from being deleted meanwhile.
        partial = path.with_suffix(".partial")
        async with locked(name_lock(self._pool_dir, "image", image.name), exclusive=False):
            self._catalog.get(req.image)
            await qemu_img.create_overlay(str(partial), image.disk_path, size_gib)
            os.replace(partial, path)
        log.info("volume created", volume=name, size_gib=size_gib, image=image.name)
        return volume, True

    async def delete_root(self, vm_id: str) -> bool:
        """Remove the VM's root volume; absent is fine. Returns whether a file was removed."""
        path = self.path_of(root_volume_name(vm_id))
        path.with_suffix(".partial").unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
