"""File locks that order storage changes across replicas sharing a pool (flock, which NFS
supports too): check-then-act steps such as "no volume uses this image, delete it" or "this
volume is free, claim it" hold one for their whole duration."""

from __future__ import annotations

import asyncio
import fcntl
import os
from contextlib import asynccontextmanager
from pathlib import Path

_POLL_S = 0.05


@asynccontextmanager
async def locked(path: Path, exclusive: bool = True):
    """Hold a lock on ``path`` (created if missing) without blocking the event loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    try:
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                await asyncio.sleep(_POLL_S)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def name_lock(root: Path, kind: str, name: str) -> Path:
    """The lock file serialising changes to one image or volume (names are validated)."""
    return root / ".locks" / f"{kind}-{name}.lock"
