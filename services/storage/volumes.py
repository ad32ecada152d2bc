"""Root volumes of VMs: qcow2 thin clones of images, in the shared pool or in the local pool of
the VM's host, and the copies that follow a VM to another host's local pool."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from services.storage import qemu_img
from services.storage.catalog import ImageCatalog
from services.storage.locks import locked, name_lock
from services.storage.pools import Pool, PoolRegistry
from services.storage.qcow2 import read_header
from shared.errors import Conflict, InvalidRequest, NotFound, StorageError
from shared.models import RootDisk, Volume, VolumeRequest
from shared.units import GIB

log = structlog.get_logger(__name__)

_WAKE_UP_S = 2.0  # how often a long copy reports that it is still going


def root_volume_name(vm_id: str) -> str:
    return f"vm-{vm_id}-root"


class RootVolumes:
    def __init__(self, pools: PoolRegistry, catalog: ImageCatalog) -> None:
        self._pools = pools
        self._catalog = catalog

    def path_in(self, pool: Pool, vm_id: str) -> Path:
        return pool.volumes_dir / f"{root_volume_name(vm_id)}.qcow2"

    def locate(self, vm_id: str) -> tuple[Pool, Path] | None:
        """The pool holding the VM's root volume (the shared pool first), None when none does."""
        for pool in self._pools.all():
            path = self.path_in(pool, vm_id)
            if path.exists():
                return pool, path
        return None

    def disk_of(self, vm_id: str) -> Path:
        """The root volume's path; where it would be in the shared pool when there is none."""
        found = self.locate(vm_id)
        return found[1] if found else self.path_in(self._pools.shared, vm_id)

    def describe(self, vm_id: str) -> RootDisk:
        """Raises NotFound when no pool holds the VM's root volume, Conflict when several do (a
        move that ended undecided keeps both copies until an operator settles it)."""
        holders = [pool for pool in self._pools.all() if self.path_in(pool, vm_id).exists()]
        if len(holders) > 1:
            raise Conflict(f"the root volume of VM {vm_id} is in several pools "
                           f"({', '.join(p.name for p in holders)}): an earlier move ended undecided")
        if not holders:
            raise NotFound(f"VM {vm_id} has no root volume in any pool")
        return self.describe_in(holders[0], vm_id)

    async def create(self, req: VolumeRequest) -> tuple[Volume, bool]:
        """Thin clone of the image, grown to ``disk_gib``, in ``req.pool`` (default: the shared
        pool). Idempotent: an existing volume of that VM there is returned as is. Returns
        (volume, created_now). Raises InvalidRequest for an unknown pool, NotFound for an
        unknown image."""
        pool = self._pools.get(req.pool) if req.pool else self._pools.shared
        image = self._catalog.get(req.image)
        path = self.path_in(pool, req.vm_id)
        size_gib = max(req.disk_gib, image.min_disk_gib)
        volume = Volume(name=path.stem, path=str(path), size_gib=size_gib, image=image, pool=pool.name)
        if path.exists():
            return volume, False
        pool.volumes_dir.mkdir(parents=True, exist_ok=True)
        # Build under a temporary name and rename, so a crash never leaves a half-made volume
        # that a retry would then mistake for a finished one. The image's lock, shared with
        # other clones, keeps the image from being deleted meanwhile.
        partial = path.with_suffix(".partial")
        async with locked(name_lock(self._pools.shared.path, "image", image.name), exclusive=False):
            self._catalog.get(req.image)
            await qemu_img.create_overlay(str(partial), image.disk_path, size_gib * GIB)
            os.replace(partial, path)
        log.info("volume created", volume=path.stem, pool=pool.name, size_gib=size_gib, image=image.name)
        return volume, True

    async def delete(self, vm_id: str, pool_name: str | None = None) -> list[str]:
        """Remove the VM's root volume from ``pool_name``, or from every pool; absent is fine.
        Returns the names of the pools it was removed from."""
        pools = [self._pools.get(pool_name)] if pool_name else self._pools.all()
        removed = []
        for pool in pools:
            path = self.path_in(pool, vm_id)
            path.with_suffix(".partial").unlink(missing_ok=True)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(pool.name)
        return removed

    async def copy_to(self, vm_id: str, from_pool: str, to_pool: str,
                      on_wait: Callable[[int, int], None]) -> tuple[RootDisk, bool]:
        """Copy the stopped VM's root volume, whole (its snapshots too), from ``from_pool`` into
        ``to_pool``; the copy keeps the image it is a clone of, which every host sees.
        Idempotent. ``on_wait`` gets (bytes copied, bytes to copy) every couple of seconds.
        Returns (copy, created_now). Raises InvalidRequest (unknown or same pool), NotFound,
        StorageError."""
        source, target_pool = self._copy_ends(vm_id, from_pool, to_pool)
        target = self.path_in(target_pool, vm_id)
        if target.exists():
            return self.describe_in(target_pool, vm_id), False
        partial = target.with_suffix(".partial")
        target_pool.volumes_dir.mkdir(parents=True, exist_ok=True)
        await _copy_sparse(Path(source.path), partial, on_wait)
        os.replace(partial, target)
        log.info("root volume copied", vm_id=vm_id, source_pool=source.pool, target_pool=target_pool.name,
                 allocated_bytes=target.stat().st_blocks * 512)
        return self.describe_in(target_pool, vm_id), True

    async def prepare_in(self, vm_id: str, from_pool: str, to_pool: str) -> RootDisk:
        """An empty overlay in ``to_pool`` on the same image and of the same virtual size as the
        VM's root volume in ``from_pool``: what a live migration copies the running disk into.
        A file left there by an earlier, abandoned copy is made anew, so nothing stale survives
        into the copy. Raises InvalidRequest (unknown or same pool), NotFound, Conflict when the
        root volume has snapshots (a live copy would lose them), StorageError."""
        source, target_pool = self._copy_ends(vm_id, from_pool, to_pool)
        if source.snapshot_count:
            raise Conflict(f"the root volume of VM {vm_id} has {source.snapshot_count} snapshot(s), which a "
                           "live copy of its disk would lose: delete them or stop the VM and migrate it cold")
        header = read_header(Path(source.path))
        if header is None or header.backing_file is None:
            raise StorageError(f"the root volume of VM {vm_id} is not a clone of an image")
        target = self.path_in(target_pool, vm_id)
        partial = target.with_suffix(".partial")
        target_pool.volumes_dir.mkdir(parents=True, exist_ok=True)
        await qemu_img.create_overlay(str(partial), header.backing_file, header.virtual_size_bytes)
        os.replace(partial, target)
        return self.describe_in(target_pool, vm_id)

    def _copy_ends(self, vm_id: str, from_pool: str, to_pool: str) -> tuple[RootDisk, Pool]:
        if from_pool == to_pool:
            raise InvalidRequest(f"a copy of VM {vm_id}'s root volume needs two pools, not {to_pool} twice")
        return self.describe_in(self._pools.get(from_pool), vm_id), self._pools.get(to_pool)

    def describe_in(self, pool: Pool, vm_id: str) -> RootDisk:
        path = self.path_in(pool, vm_id)
        header = read_header(path)
        if header is None:
            raise NotFound(f"VM {vm_id} has no root volume in {pool.name}")
        return RootDisk(vm_id, pool.name, str(path), pool.host_id, header.snapshot_count)


async def _copy_sparse(source: Path, target: Path, on_wait: Callable[[int, int], None]) -> None:
    """``cp`` keeps holes as holes, so a thin volume stays thin. Raises StorageError."""
    target.unlink(missing_ok=True)
    total_bytes = source.stat().st_blocks * 512
    proc = await asyncio.create_subprocess_exec(
        "cp", "--sparse=always", "--", str(source), str(target), stderr=asyncio.subprocess.PIPE
    )
    talk = asyncio.ensure_future(proc.communicate())
    try:
        while not (await asyncio.wait({talk}, timeout=_WAKE_UP_S))[0]:
            on_wait(target.stat().st_blocks * 512 if target.exists() else 0, total_bytes)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await asyncio.shield(talk)
        target.unlink(missing_ok=True)
        raise
    _, err = talk.result()
    if proc.returncode != 0:
        target.unlink(missing_ok=True)
        raise StorageError(f"copying {source.name}: {err.decode(errors='replace').strip() or 'cp failed'}")
