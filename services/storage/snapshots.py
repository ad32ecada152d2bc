"""Snapshots of a stopped VM's disks: qcow2 internal snapshots, taken with the same name on
its root disk and on every data volume attached at that moment.

Internal snapshots live inside each qcow2 file, so they need no catalog of their own and go
away with their volume. qemu-img needs the disk's write lock to take, apply or delete one,
which a running guest holds: QEMU's locking itself refuses work on a disk in use, and that
refusal comes back as a Conflict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from services.storage import qemu_img
from services.storage.data_volumes import VolumeStore
from shared.errors import NotFound
from shared.storage_models import SnapshotList, SnapshotView

log = structlog.get_logger(__name__)


class VmSnapshots:
    def __init__(self, root_disk_of: Callable[[str], Path], volumes: VolumeStore, timeout_s: float) -> None:
        self._root_disk_of = root_disk_of
        self._volumes = volumes
        self._timeout_s = timeout_s

    def disks(self, vm_id: str) -> list[tuple[str, Path]]:
        """(volume name, path) of the VM's disks: root first, then attached data volumes.
        Raises NotFound when the VM has no root disk."""
        root = self._root_disk_of(vm_id)
        if not root.exists():
            raise NotFound(f"VM {vm_id} has no root disk")
        attached = [(v.name, Path(v.path)) for v in self._volumes.attached_to(vm_id)]
        return [(root.stem, root), *attached]

    async def _names_on(self, path: Path) -> dict[str, float]:
        info = await qemu_img.info(str(path), timeout_s=self._timeout_s)
        return {s["name"]: s.get("date-sec", 0) + s.get("date-nsec", 0) / 1e9 for s in info.get("snapshots", [])}

    async def list(self, vm_id: str) -> SnapshotList:
        """The snapshots of the VM's root disk, each with the disks that hold it."""
        by_disk = [(name, await self._names_on(path)) for name, path in self.disks(vm_id)]
        _root, root_snapshots = by_disk[0]
        views = [
            SnapshotView(snap, created, tuple(disk for disk, names in by_disk if snap in names))
            for snap, created in sorted(root_snapshots.items(), key=lambda item: item[1])
        ]
        return SnapshotList(vm_id, tuple(views))

    async def get(self, vm_id: str, name: str) -> SnapshotView:
        for view in (await self.list(vm_id)).snapshots:
            if view.name == name:
                return view
        raise NotFound(f"VM {vm_id} has no snapshot named '{name}'")

    async def create(self, vm_id: str, name: str) -> tuple[SnapshotView, list[str]]:
        """Take ``name`` on every disk that lacks it (idempotent). Returns the snapshot and the
        disks it was taken on now. Raises Conflict while a guest uses a disk."""
        taken = []
        for disk, path in self.disks(vm_id):
            if name not in await self._names_on(path):
                await qemu_img.snapshot("-c", str(path), name, self._timeout_s)
                taken.append(disk)
        log.info("snapshot taken", vm_id=vm_id, snapshot=name, disks=taken)
        return await self.get(vm_id, name), taken

    async def revert(self, vm_id: str, name: str) -> list[str]:
        """Put every disk holding ``name`` back to it; disks attached after it was taken are
        left as they are. Idempotent while nothing writes to the disks. Returns the disks
        reverted. Raises NotFound, or Conflict while a guest uses a disk."""
        snapshot = await self.get(vm_id, name)
        paths = dict(self.disks(vm_id))
        reverted = [disk for disk in snapshot.disks if disk in paths]
        for disk in reverted:
            await qemu_img.snapshot("-a", str(paths[disk]), name, self._timeout_s)
        log.info("snapshot reverted", vm_id=vm_id, snapshot=name, disks=reverted)
        return reverted

    async def delete(self, vm_id: str, name: str) -> list[str]:
        """Remove ``name`` from every disk holding it; absent is fine. Returns the disks it was
        removed from."""
        removed = []
        for disk, path in self.disks(vm_id):
            if name in await self._names_on(path):
                await qemu_img.snapshot("-d", str(path), name, self._timeout_s)
                removed.append(disk)
        log.info("snapshot deleted", vm_id=vm_id, snapshot=name, disks=removed)
        return removed
