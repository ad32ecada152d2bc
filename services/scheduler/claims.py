"""Capacity claims: what placement promised but no heartbeat shows yet.

A claim lives until the workflow releases it (its VM runs, or the operation failed) or until it
expires, so a crashed workflow cannot hold capacity forever.
"""

from __future__ import annotations

from services.scheduler.host_state import Claim


class ClaimBook:
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._claims: dict[str, Claim] = {}

    def claim(
        self, vm_id: str, host_id: str, vcpus: int, memory_mib: int, disk_gib: int, now_s: float,
        group: str | None = None,
    ) -> Claim:
        """Idempotent per VM: placing the same VM again replaces its earlier claim."""
        claim = Claim(vm_id, host_id, vcpus, memory_mib, disk_gib, now_s + self._ttl_s, group)
        self._claims[vm_id] = claim
        return claim

    def get(self, vm_id: str) -> Claim | None:
        return self._claims.get(vm_id)

    def release(self, vm_id: str) -> None:
        self._claims.pop(vm_id, None)

    def settle(self, host_id: str, running_vm_ids: set[str]) -> None:
        """Drop the claims of VMs the host now reports: their domains count from here on."""
        for vm_id in [v for v, c in self._claims.items() if c.host_id == host_id and v in running_vm_ids]:
            del self._claims[vm_id]

    def live(self, now_s: float) -> list[Claim]:
        expired = [vm_id for vm_id, c in self._claims.items() if c.expires_at_s <= now_s]
        for vm_id in expired:
            del self._claims[vm_id]
        return list(self._claims.values())
