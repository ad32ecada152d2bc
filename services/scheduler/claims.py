"""Capacity claims: what placement promised but no heartbeat shows yet.

A claim lives until the workflow releases it (its VM runs, or the operation failed), until the
host reports the VM (its domain counts from then on), or until it expires, so a crashed workflow
cannot hold capacity forever. Claims are indexed by host, so a heartbeat touches only its own.
"""

from __future__ import annotations

from services.scheduler.host_state import Claim


class ClaimBook:
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._claims: dict[str, Claim] = {}
        self._by_host: dict[str, dict[str, Claim]] = {}

    def claim(
        self, vm_id: str, host_id: str, vcpus: int, memory_mib: int, disk_gib: int, now_s: float,
        group: str | None = None,
    ) -> Claim:
        """Idempotent per VM: placing the same VM again replaces its earlier claim."""
        self.release(vm_id)
        claim = Claim(vm_id, host_id, vcpus, memory_mib, disk_gib, now_s + self._ttl_s, group)
        self._claims[vm_id] = claim
        self._by_host.setdefault(host_id, {})[vm_id] = claim
        return claim

    def get(self, vm_id: str) -> Claim | None:
        return self._claims.get(vm_id)

    def on_host(self, host_id: str) -> list[Claim]:
        return list(self._by_host.get(host_id, {}).values())

    def release(self, vm_id: str) -> Claim | None:
        claim = self._claims.pop(vm_id, None)
        if claim is not None:
            self._by_host[claim.host_id].pop(vm_id, None)
        return claim

    def settle(self, host_id: str, running_vm_ids: set[str]) -> bool:
        """Drop the claims of VMs the host now reports. Returns whether any was dropped."""
        settled = [vm_id for vm_id in self._by_host.get(host_id, {}) if vm_id in running_vm_ids]
        for vm_id in settled:
            self.release(vm_id)
        return bool(settled)

    def expire(self, now_s: float) -> set[str]:
        """Drop expired claims; returns the hosts whose claims changed."""
        expired = [c for c in self._claims.values() if c.expires_at_s <= now_s]
        for claim in expired:
            self.release(claim.vm_id)
        return {c.host_id for c in expired}

    def live(self, now_s: float) -> list[Claim]:
        self.expire(now_s)
        return list(self._claims.values())
