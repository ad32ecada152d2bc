"""Volumes across every pool: listing (root disks included), and the life of data volumes:
create (empty, thin or full clone of an image), resize (grow only), attach claims, delete.

A volume is ``<pool>/volumes/<name>.qcow2``; a data volume also has ``<name>.json`` holding
what the file cannot tell (its image, who it is attached to). Names are unique across pools,
so a name alone finds a volume. Changes to one volume hold that volume's lock.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import structlog

from services.storage import qemu_img
from services.storage.catalog import ImageCatalog
from services.storage.locks import locked, name_lock
from services.storage.pools import Pool, PoolRegistry, allocated_bytes
from services.storage.qcow2 import read_header
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.models import Image
from shared.storage_models import (
    AttachmentClaim,
    CloneMode,
    VolumeCreateRequest,
    VolumeDeleteRequest,
    VolumeKind,
    VolumeResizeRequest,
    VolumeView,
    check_volume_name,
    root_vm_id,
)
from shared.units import GIB

log = structlog.get_logger(__name__)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # readers never see half a file


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


class VolumeStore:
    def __init__(self, pools: PoolRegistry, catalog: ImageCatalog, max_volume_gib: int) -> None:
        self._pools = pools
        self._catalog = catalog
        self._max_volume_gib = max_volume_gib

    # -- reads ------------------------------------------------------------------------------

    def find(self, name: str) -> tuple[Pool, Path] | None:
        for pool in self._pools.all():
            path = pool.volumes_dir / f"{name}.qcow2"
            if path.exists():
                return pool, path
        return None

    def view(self, name: str) -> VolumeView:
        """Raises NotFound."""
        found = self.find(name)
        if found is None:
            raise NotFound(f"no volume named '{name}'")
        images = {img.disk_path: img.name for img in self._catalog.list()}
        return self._view(*found, images)

    def list(self) -> list[VolumeView]:
        images = {img.disk_path: img.name for img in self._catalog.list()}
        views = []
        for pool in self._pools.all():
            for path in sorted(pool.volumes_dir.glob("*.qcow2")):
                try:
                    views.append(self._view(pool, path, images))
                except FileNotFoundError:
                    continue  # deleted while we looked
        return views

    def backed_by(self, disk_path: str) -> list[str]:
        """Names of the volumes whose backing file is ``disk_path``, in every pool."""
        target = os.path.realpath(disk_path)
        return [
            path.stem
            for pool in self._pools.all()
            for path in sorted(pool.volumes_dir.glob("*.qcow2"))
            if (h := read_header(path)) and h.backing_file and os.path.realpath(h.backing_file) == target
        ]

    def attached_to(self, vm_id: str) -> list[VolumeView]:
        return [v for v in self.list() if v.kind is VolumeKind.DATA and v.vm_id == vm_id]

    def _view(self, pool: Pool, path: Path, images: dict[str, str]) -> VolumeView:
        header = read_header(path)
        meta = read_json(path.with_suffix(".json"))
        owner = root_vm_id(path.stem)
        image = meta.get("image")
        if image is None and header and header.backing_file:
            image = images.get(header.backing_file)
        clone = meta.get("clone") or (CloneMode.THIN.value if header and header.backing_file else None)
        return VolumeView(
            name=path.stem,
            pool=pool.name,
            path=str(path),
            kind=VolumeKind.ROOT if owner else VolumeKind.DATA,
            size_gib=round(header.virtual_size_bytes / GIB, 3) if header else 0.0,
            allocated_bytes=allocated_bytes(path),
            image=image,
            clone=CloneMode(clone) if clone else None,
            vm_id=owner or meta.get("attached_to"),
            host_id=pool.host_id,
            snapshot_count=header.snapshot_count if header else 0,
            created_at_s=meta.get("created_at_s") or path.stat().st_mtime,
        )

    # -- checks shared by the API's request-time check and the activity ----------------------

    def check_create(self, req: VolumeCreateRequest) -> tuple[Pool, Image | None]:
        """Raises InvalidRequest (name, pool, size), NotFound (image) or Conflict (name taken)."""
        check_volume_name(req.name)
        pool = self._pools.get(req.pool)
        if not 1 <= req.size_gib <= self._max_volume_gib:
            raise InvalidRequest(f"size_gib must be between 1 and {self._max_volume_gib}")
        image = None
        if req.image is not None:
            image = self._catalog.get(req.image)
            header = read_header(Path(image.disk_path))
            image_gib = math.ceil(header.virtual_size_bytes / GIB) if header else image.min_disk_gib
            if req.size_gib < max(image_gib, image.min_disk_gib):
                raise InvalidRequest(
                    f"size_gib: image '{image.name}' needs at least {max(image_gib, image.min_disk_gib)}"
                )
        if self.find(req.name) is not None:
            raise Conflict(f"a volume named '{req.name}' already exists")
        return pool, image

    # -- changes ----------------------------------------------------------------------------

    def _lock(self, name: str) -> Path:
        return name_lock(self._pools.shared.path, "volume", name)

    async def create(self, req: VolumeCreateRequest, op_id: str, on_wait=None) -> tuple[VolumeView, bool]:
        """Idempotent for the same operation: a volume this operation made is returned as is.
        Returns (volume, created_now)."""
        async with locked(self._lock(req.name)):
            found = self.find(req.name)
            if found and read_json(found[1].with_suffix(".json")).get("operation_id") == op_id:
                return self.view(req.name), False
            pool, image = self.check_create(req)
            if image is None:
                await self._build(pool, req, None, op_id, on_wait)
            else:
                async with locked(name_lock(self._pools.shared.path, "image", image.name), exclusive=False):
                    self._catalog.get(image.name)  # still there now that we hold its lock
                    await self._build(pool, req, image, op_id, on_wait)
            return self.view(req.name), True

    async def _build(
        self, pool: Pool, req: VolumeCreateRequest, image: Image | None, op_id: str, on_wait
    ) -> None:
        pool.volumes_dir.mkdir(parents=True, exist_ok=True)
        path = pool.volumes_dir / f"{req.name}.qcow2"
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        if image is None:
            await qemu_img.create_empty(str(partial), req.size_gib)
        elif req.clone is CloneMode.THIN:
            await qemu_img.create_overlay(str(partial), image.disk_path, req.size_gib * GIB)
        else:
            await qemu_img.convert(image.disk_path, "qcow2", str(partial), on_wait=on_wait)
            await qemu_img.resize(str(partial), req.size_gib)
        meta = {
            "name": req.name, "size_gib": req.size_gib, "image": image.name if image else None,
            "clone": req.clone.value if image else None, "attached_to": None,
            "created_at_s": time.time(), "operation_id": op_id,
        }  # fmt: skip
        write_json(path.with_suffix(".json"), meta)
        os.replace(partial, path)  # the volume appears whole or not at all
        log.info("volume created", volume=req.name, pool=pool.name, size_gib=req.size_gib,
                 image=meta["image"], clone=meta["clone"])

    async def resize(self, req: VolumeResizeRequest) -> tuple[VolumeView, bool]:
        """Grow to ``size_gib``; the same size is fine. Raises InvalidRequest for a shrink,
        Conflict when the disk is in use by a running guest or is a VM's root disk."""
        async with locked(self._lock(req.name)):
            volume = self.view(req.name)
            if volume.kind is VolumeKind.ROOT:
                raise Conflict(f"'{req.name}' is the root disk of VM {volume.vm_id}; it is sized with its VM")
            if req.size_gib < volume.size_gib:
                raise InvalidRequest(
                    f"size_gib: volumes only grow; '{req.name}' has {volume.size_gib:g} GiB"
                )
            if req.size_gib > self._max_volume_gib:
                raise InvalidRequest(f"size_gib must be at most {self._max_volume_gib}")
            if req.size_gib == volume.size_gib:
                return volume, False
            await qemu_img.resize(volume.path, req.size_gib)
            meta_path = Path(volume.path).with_suffix(".json")
            write_json(meta_path, {**read_json(meta_path), "size_gib": req.size_gib})
            return self.view(req.name), True

    async def delete(self, req: VolumeDeleteRequest) -> VolumeView | None:
        """Remove a data volume; absent is fine (returns None). Raises Conflict while it is
        attached, or for a VM's root disk."""
        async with locked(self._lock(req.name)):
            found = self.find(req.name)
            if found is None:
                return None
            volume = self.view(req.name)
            if volume.kind is VolumeKind.ROOT:
                raise Conflict(f"'{req.name}' is the root disk of VM {volume.vm_id}; delete the VM instead")
            if volume.vm_id not in (None, req.stale_attachment):
                raise Conflict(f"volume '{req.name}' is attached to VM {volume.vm_id}; detach it first")
            path = found[1]
            path.with_suffix(".partial").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            return volume

    async def claim(self, claim: AttachmentClaim) -> VolumeView:
        """Record that the volume is attached to ``vm_id``; claiming it again for the same VM is
        fine. Raises NotFound, or Conflict if another VM holds it, it is a root disk, or it is in
        another host's local pool."""
        async with locked(self._lock(claim.volume)):
            volume = self.view(claim.volume)
            if volume.kind is VolumeKind.ROOT:
                raise Conflict(f"'{claim.volume}' is the root disk of VM {volume.vm_id}")
            if claim.host_id and not self._pools.get(volume.pool).reachable_from(claim.host_id):
                raise Conflict(f"volume '{claim.volume}' is in pool {volume.pool}, which host {claim.host_id} "
                               "cannot reach: attach it to a VM on that host")
            if volume.vm_id not in (None, claim.vm_id, claim.stale_attachment):
                raise Conflict(f"volume '{claim.volume}' is attached to VM {volume.vm_id}")
            self._set_attachment(volume, claim.vm_id)
            return self.view(claim.volume)

    async def release(self, claim: AttachmentClaim) -> bool:
        """Forget the attachment to ``vm_id``; a volume gone or attached elsewhere is left alone.
        Returns whether anything changed."""
        async with locked(self._lock(claim.volume)):
            found = self.find(claim.volume)
            if found is None:
                return False
            volume = self.view(claim.volume)
            if volume.kind is VolumeKind.ROOT or volume.vm_id != claim.vm_id:
                return False
            self._set_attachment(volume, None)
            return True

    def _set_attachment(self, volume: VolumeView, vm_id: str | None) -> None:
        meta_path = Path(volume.path).with_suffix(".json")
        write_json(meta_path, {**read_json(meta_path), "name": volume.name, "attached_to": vm_id})
