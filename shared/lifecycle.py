"""Process lifecycle shared by the services' ``__main__`` modules."""

from __future__ import annotations

import asyncio
import signal


async def run_until_signalled() -> None:
    """Return when the process gets SIGTERM or SIGINT, so callers can shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
