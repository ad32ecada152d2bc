"""Changing the image catalog: importing image files, templates flattened from a VM's disk,
deleting images no volume uses.

An image is built whole in ``<pool>/.staging/`` and renamed into ``images/<name>``, so the
catalog never lists a half-made image and two builds of one name cannot both win. Its
``image.json`` records the operation that made it, which makes a retried build idempotent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import structlog

from services.storage import qemu_img
from services.storage.catalog import ImageCatalog, load_image
from services.storage.data_volumes import write_json
from services.storage.image_checks import (
    ImageLimits,
    check_image_info,
    check_source_path,
)
from services.storage.locks import locked, name_lock
from services.storage.pools import Pool, allocated_bytes
from services.storage.qcow2 import read_header
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.storage_models import (
    ImageView,
    ImportCheck,
    ImportRequest,
    TemplateRequest,
    check_name,
)
from shared.units import GIB

log = structlog.get_logger(__name__)
DISK_FILE = "disk.qcow2"


def image_view(image_dir: Path) -> ImageView:
    image = load_image(image_dir)
    meta = json.loads((image_dir / "image.json").read_text())
    header = read_header(Path(image.disk_path))
    return ImageView(
        name=image.name,
        description=image.description,
        kind=meta.get("kind", "base"),
        disk_path=image.disk_path,
        virtual_size_gib=round(header.virtual_size_bytes / GIB, 3) if header else float(image.min_disk_gib),
        file_size_bytes=allocated_bytes(Path(image.disk_path)),
        min_memory_mib=image.min_memory_mib,
        min_disk_gib=image.min_disk_gib,
        boot="kernel" if image.boot else "disk",
        boot_marker=image.boot_marker,
        source_vm=meta.get("source_vm"),
        created_at_s=meta.get("created_at_s"),
    )


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class ImageStore:
    def __init__(self, pool: Pool, catalog: ImageCatalog, limits: ImageLimits, import_dirs: list[Path]) -> None:
        self._pool = pool
        self._catalog = catalog
        self._limits = limits
        self._import_dirs = import_dirs

    # -- reads ------------------------------------------------------------------------------

    def views(self) -> list[ImageView]:
        views = []
        for meta in sorted(self._pool.images_dir.glob("*/image.json")):
            try:
                views.append(image_view(meta.parent))
            except FileNotFoundError:
                continue  # deleted while we looked
        return views

    def view(self, name: str) -> ImageView:
        for view in self.views():
            if view.name == name:
                return view
        raise NotFound(f"unknown image '{name}'")

    def _dir_of(self, name: str) -> Path:
        return self._pool.images_dir / name

    def _lock(self, name: str) -> Path:
        return name_lock(self._pool.path, "image", name)

    # -- import -----------------------------------------------------------------------------

    async def check_import(self, req: ImportRequest) -> ImportCheck:
        """Everything that can be said about the request before copying: the name is valid and
        free, the files lie in an import directory, the image is standalone and within limits.
        Raises InvalidRequest or Conflict."""
        check_name("image", req.name)
        if self._dir_of(req.name).exists():
            raise Conflict(f"an image named '{req.name}' already exists")
        source = check_source_path("source_path", req.source_path, self._import_dirs)
        if (req.kernel_path is None) != (req.initrd_path is None):
            raise InvalidRequest("kernel_path and initrd_path go together")
        for field in ("kernel_path", "initrd_path"):
            if getattr(req, field) is not None:
                check_source_path(field, getattr(req, field), self._import_dirs)
        info = await qemu_img.info(str(source), shared=False, untrusted=True)
        return check_image_info(info, req.format, source.stat().st_size, self._limits)

    async def import_image(self, req: ImportRequest, op_id: str, on_wait=None) -> tuple[ImageView, bool]:
        """Idempotent for the same operation. Returns (image, created_now)."""
        async with locked(self._lock(req.name)):
            if self._made_by(req.name, op_id):
                return self.view(req.name), False
            checked = await self.check_import(req)
            staging = self._staging(op_id)
            await qemu_img.convert(os.path.realpath(req.source_path), req.format.value,
                                   str(staging / DISK_FILE), on_wait=on_wait, standalone=True)
            meta = {
                "name": req.name, "description": req.description, "kind": "imported", "disk": DISK_FILE,
                "min_memory_mib": req.min_memory_mib,
                "min_disk_gib": req.min_disk_gib or max(1, math.ceil(checked.virtual_size_gib)),
                "boot_marker": req.boot_marker, "source_path": req.source_path,
            }  # fmt: skip
            if req.kernel_path and req.initrd_path:
                shutil.copyfile(os.path.realpath(req.kernel_path), staging / "vmlinuz")
                shutil.copyfile(os.path.realpath(req.initrd_path), staging / "initrd")
                meta |= {"kernel": "vmlinuz", "initrd": "initrd", "cmdline": req.cmdline}
            return self._publish(staging, req.name, op_id, meta), True

    # -- templates --------------------------------------------------------------------------

    def check_template(self, req: TemplateRequest, root_disk: Path) -> None:
        check_name("image", req.name)
        if self._dir_of(req.name).exists():
            raise Conflict(f"an image named '{req.name}' already exists")
        self._catalog.get(req.source_image)
        if not root_disk.exists():
            raise NotFound(f"VM {req.vm_id} has no root disk")

    async def create_template(self, req: TemplateRequest, root_disk: Path, op_id: str,
                              on_wait=None) -> tuple[ImageView, bool]:
        """Flatten the VM's root disk (its image and its own changes) into a standalone image that
        boots the way the VM's image does. Raises Conflict while a guest uses the disk."""
        async with locked(self._lock(req.name)):
            if self._made_by(req.name, op_id):
                return self.view(req.name), False
            self.check_template(req, root_disk)
            source = self._catalog.get(req.source_image)
            source_meta = json.loads((Path(source.disk_path).parent / "image.json").read_text())
            staging = self._staging(op_id)
            await qemu_img.convert(str(root_disk), "qcow2", str(staging / DISK_FILE), on_wait=on_wait)
            header = read_header(staging / DISK_FILE)
            disk_gib = math.ceil(header.virtual_size_bytes / GIB) if header else source.min_disk_gib
            meta = {
                "name": req.name, "kind": "template", "disk": DISK_FILE,
                "description": req.description or f"template of VM {req.vm_name} ({source.name})",
                "min_memory_mib": source.min_memory_mib, "min_disk_gib": max(disk_gib, source.min_disk_gib),
                "boot_marker": source.boot_marker, "domain_types": list(source.domain_types),
                "source_vm": req.vm_id, "source_image": source.name, "os_type": source_meta.get("os_type"),
            }  # fmt: skip
            if source.boot is not None:
                # Linked, not referenced: the template keeps booting after its image is deleted.
                _link_or_copy(Path(source.boot.kernel_path), staging / "vmlinuz")
                _link_or_copy(Path(source.boot.initrd_path), staging / "initrd")
                meta |= {"kernel": "vmlinuz", "initrd": "initrd", "cmdline": source.boot.cmdline}
            return self._publish(staging, req.name, op_id, meta), True

    # -- delete -----------------------------------------------------------------------------

    async def delete(self, name: str, users_of) -> ImageView | None:
        """Remove the image unless a volume is backed by it; absent is fine (returns None).
        ``users_of(disk_path)`` lists those volumes; it is asked while holding the image's lock,
        which every clone of the image holds too. Raises Conflict."""
        async with locked(self._lock(name)):
            try:
                view = self.view(name)
            except NotFound:
                return None
            users = users_of(view.disk_path)
            if users:
                raise Conflict(f"image '{name}' is in use by {len(users)} volume(s): {', '.join(users[:5])}")
            trash = self._pool.path / ".trash" / f"{name}-{uuid.uuid4().hex[:8]}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(Path(view.disk_path).parent, trash)  # gone from the catalog at once
            shutil.rmtree(trash, ignore_errors=True)
            log.info("image deleted", image=name)
            return view

    # -- building ---------------------------------------------------------------------------

    def _made_by(self, name: str, op_id: str) -> bool:
        try:
            meta = json.loads((self._dir_of(name) / "image.json").read_text())
        except FileNotFoundError:
            return False
        return meta.get("operation_id") == op_id

    def _staging(self, op_id: str) -> Path:
        staging = self._pool.path / ".staging" / hashlib.sha256(op_id.encode()).hexdigest()[:16]
        shutil.rmtree(staging, ignore_errors=True)  # what a crashed attempt left
        staging.mkdir(parents=True)
        return staging

    def _publish(self, staging: Path, name: str, op_id: str, meta: dict) -> ImageView:
        write_json(staging / "image.json", {**meta, "created_at_s": time.time(), "operation_id": op_id})
        target = self._dir_of(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, target)  # atomic; fails if another build got there first
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise Conflict(f"an image named '{name}' already exists") from exc
        log.info("image created", image=name, kind=meta["kind"])
        return image_view(target)
