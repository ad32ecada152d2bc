"""The pools a storage service serves: the shared pool every host sees, and each host's local
pool. A pool is a directory with ``images/`` and ``volumes/``; capacity comes from the
filesystem under it, used space from what its files really occupy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidRequest
from shared.storage_models import PoolKind, PoolView, check_name, local_pool_name


@dataclass(frozen=True)
class Pool:
    name: str
    kind: PoolKind
    path: Path
    host_id: str | None = None

    @property
    def volumes_dir(self) -> Path:
        return self.path / "volumes"

    @property
    def images_dir(self) -> Path:
        return self.path / "images"

    def reachable_from(self, host_id: str | None) -> bool:
        return self.kind is PoolKind.SHARED or self.host_id == host_id


class PoolRegistry:
    def __init__(self, shared: Pool, local: tuple[Pool, ...] = ()) -> None:
        self.shared = shared
        self._by_name = {p.name: p for p in (shared, *local)}
        if len(self._by_name) != 1 + len(local):
            raise ValueError("pool names must be unique")

    @classmethod
    def from_settings(cls, shared_name: str, shared_dir: str, local_dirs: dict[str, str]) -> PoolRegistry:
        shared = Pool(check_name("pool", shared_name), PoolKind.SHARED, Path(shared_dir))
        local = tuple(
            Pool(local_pool_name(check_name("host", host_id)), PoolKind.LOCAL, Path(path), host_id)
            for host_id, path in sorted(local_dirs.items())
        )
        return cls(shared, local)

    def all(self) -> list[Pool]:
        return list(self._by_name.values())

    def get(self, name: str) -> Pool:
        """Raises InvalidRequest for an unknown pool (it is always a request's field)."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name))
            raise InvalidRequest(f"unknown pool '{name}' (pools: {known})") from None

    def ensure_dirs(self) -> None:
        for pool in self.all():
            pool.volumes_dir.mkdir(parents=True, exist_ok=True)
            pool.images_dir.mkdir(parents=True, exist_ok=True)


def allocated_bytes(path: Path) -> int:
    """Space the file really occupies (thin files count only what they hold)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def used_bytes(root: Path) -> int:
    total = 0
    for directory, _dirs, files in os.walk(root):
        total += sum(allocated_bytes(Path(directory, f)) for f in files)
    return total


def pool_view(pool: Pool, volume_count: int, image_count: int) -> PoolView:
    """Capacity from statvfs of the pool's filesystem, used space from its files. Blocking."""
    st = os.statvfs(pool.path)
    return PoolView(
        name=pool.name,
        kind=pool.kind,
        host_id=pool.host_id,
        path=str(pool.path),
        capacity_bytes=st.f_blocks * st.f_frsize,
        available_bytes=st.f_bavail * st.f_frsize,
        used_bytes=used_bytes(pool.path),
        volume_count=volume_count,
        image_count=image_count,
    )
