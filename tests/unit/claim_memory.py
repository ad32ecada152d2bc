"""Shared claims in memory, for unit tests of placement: the NATS KV bucket's compare-and-set
semantics without a server."""

from __future__ import annotations

import asyncio

from services.scheduler.claims import ClaimWrite, HostClaims


class MemoryClaimStore:
    """One entry per host with a revision; a write lands only on the revision it expects. Each
    call yields to the event loop first, as a network round trip would."""

    def __init__(self) -> None:
        self.entries: dict[str, HostClaims] = {}
        self.revision = 0
        self.writes = 0

    async def read(self, host_id: str) -> HostClaims:
        await asyncio.sleep(0)
        return self.entries.get(host_id) or HostClaims(host_id)

    async def write(self, write: ClaimWrite) -> int | None:
        await asyncio.sleep(0)
        if self.entries.get(write.host_id, HostClaims(write.host_id)).revision != write.expected_revision:
            return None
        self.revision += 1
        self.writes += 1
        self.entries[write.host_id] = HostClaims(write.host_id, write.claims, self.revision)
        return self.revision
