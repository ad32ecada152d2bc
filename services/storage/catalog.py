"""The image catalog of a pool: one folder per image holding its files and an ``image.json``."""

from __future__ import annotations

import json
from pathlib import Path

from shared.errors import NotFound
from shared.models import BootSpec, Image


def load_image(image_dir: Path) -> Image:
    meta = json.loads((image_dir / "image.json").read_text())
    boot = None
    if meta.get("kernel"):
        boot = BootSpec(
            kernel_path=str(image_dir / meta["kernel"]),
            initrd_path=str(image_dir / meta["initrd"]),
            cmdline=meta.get("cmdline", ""),
        )
    return Image(
        name=meta["name"],
        description=meta.get("description", ""),
        disk_path=str(image_dir / meta["disk"]),
        virtual_size_gib=int(meta.get("min_disk_gib", 1)),
        min_memory_mib=int(meta.get("min_memory_mib", 64)),
        min_disk_gib=int(meta.get("min_disk_gib", 1)),
        boot=boot,
        boot_marker=meta.get("boot_marker"),
        domain_types=tuple(meta.get("domain_types", ("kvm", "qemu"))),
    )


class ImageCatalog:
    def __init__(self, images_dir: Path) -> None:
        self._dir = images_dir

    def list(self) -> list[Image]:
        if not self._dir.is_dir():
            return []
        images = []
        for meta in sorted(self._dir.glob("*/image.json")):
            try:
                images.append(load_image(meta.parent))
            except FileNotFoundError:
                continue  # deleted while we looked
        return images

    def get(self, name: str) -> Image:
        for image in self.list():
            if image.name == name:
                return image
        raise NotFound(f"unknown image '{name}'")
