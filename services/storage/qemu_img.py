"""Thin async wrapper around the qemu-img command.

QEMU's image locks are what keeps two writers off one disk: a disk a running guest holds
cannot be written (or copied consistently) here, and qemu-img says so. That answer becomes a
Conflict; anything else qemu-img refuses is a StorageError.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from shared.errors import Conflict, StorageError, Timeout

# Probing an untrusted image must not take the service down: cap memory and CPU time.
_UNTRUSTED_LIMITS = ("prlimit", "--as=1073741824", "--cpu=30", "--")
_WAKE_UP_S = 5.0  # how often a long run reports that it is still going


def _failure(args: tuple[str, ...], stderr: str) -> Exception:
    message = stderr.strip().splitlines()[0] if stderr.strip() else "no output"
    if "lock" in stderr and "Failed to get" in stderr:
        return Conflict(f"the disk is in use, most likely by a running guest ({message})")
    return StorageError(f"qemu-img {args[0]} failed: {message}")


async def run(
    *args: str,
    timeout_s: float | None = None,
    on_wait: Callable[[], None] | None = None,
    untrusted: bool = False,
) -> str:
    """Run ``qemu-img args``; ``on_wait`` is called every few seconds while it runs (heartbeats).
    Raises Conflict when the disk is locked by another user, Timeout, or StorageError."""
    command = (*(_UNTRUSTED_LIMITS if untrusted else ()), "qemu-img", *args)
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    talk = asyncio.ensure_future(proc.communicate())
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    try:
        while not (await asyncio.wait({talk}, timeout=_WAKE_UP_S))[0]:
            if deadline is not None and loop.time() > deadline:
                raise Timeout(f"qemu-img {args[0]} did not finish within {timeout_s:g} s")
            if on_wait is not None:
                on_wait()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await asyncio.shield(talk)
        raise
    out, err = talk.result()
    if proc.returncode != 0:
        raise _failure(args, err.decode(errors="replace"))
    return out.decode()


async def info(path: str, *, shared: bool = True, untrusted: bool = False, timeout_s: float = 30.0) -> dict[str, Any]:
    """``shared``: read even while a running guest holds the image's write lock (-U)."""
    args = ["info", "--output=json", *(["-U"] if shared else []), path]
    return json.loads(await run(*args, timeout_s=timeout_s, untrusted=untrusted))


async def create_overlay(path: str, backing_path: str, size_bytes: int) -> None:
    """A qcow2 thin clone of ``backing_path`` with virtual size ``size_bytes``."""
    await run("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing_path, path, str(size_bytes))


async def create_empty(path: str, size_gib: int) -> None:
    await run("create", "-q", "-f", "qcow2", path, f"{size_gib}G")


async def convert(source: str, source_format: str, target: str, on_wait: Callable[[], None] | None = None,
                  standalone: bool = False) -> None:
    """Copy ``source`` into a new qcow2 ``target``, flattening any backing chain. The source
    format is always given, never probed. ``standalone``: never follow a backing file, even
    one the file gained after it was checked (for files vmflow did not make)."""
    if standalone and source_format == "qcow2":
        spec = {"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": source}}
        await run("convert", "-q", "-O", "qcow2", "json:" + json.dumps(spec), target, on_wait=on_wait)
        return
    await run("convert", "-q", "-f", source_format, "-O", "qcow2", source, target, on_wait=on_wait)


async def resize(path: str, size_gib: int, timeout_s: float = 30.0) -> None:
    await run("resize", "-q", "-f", "qcow2", path, f"{size_gib}G", timeout_s=timeout_s)


async def snapshot(action: str, path: str, name: str, timeout_s: float = 30.0) -> None:
    """``action``: -c (create), -a (apply: revert the disk to it), -d (delete)."""
    # No -f here (qemu-img snapshot has none): these are qcow2 files vmflow made itself.
    await run("snapshot", "-q", action, name, path, timeout_s=timeout_s)
