"""Thin async wrapper around the qemu-img command."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from shared.errors import StorageError


async def run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise StorageError(f"qemu-img {args[0]} failed: {err.decode().strip()}")
    return out.decode()


async def info(path: str) -> dict[str, Any]:
    # -U: read even while a running guest holds the image's write lock.
    return json.loads(await run("info", "-U", "--output=json", path))


async def create_overlay(path: str, backing_path: str, size_gib: int) -> None:
    """A qcow2 thin clone of ``backing_path`` with virtual size ``size_gib``."""
    await run("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing_path, path, f"{size_gib}G")
