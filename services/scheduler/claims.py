"""Capacity claims: what placement promised but no heartbeat shows yet.

Claims are shared by every scheduler replica: one entry per host in a store with a revision
(the NATS KV bucket ``vmflow_claims``), changed only by compare-and-set on that revision, so two
replicas can never both give the last free slot of a host away. Each replica keeps a mirror of
the store, the ``ClaimBook``, to decide from; the store settles who wins.

A claim lives until a workflow releases it (its VM runs, or the operation failed), until the host
reports the VM (its domain counts from then on), or until it expires, so a crashed workflow cannot
hold capacity forever. This module is pure: the store's I/O is in ``claim_store``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from services.scheduler.host_state import Claim


@dataclass(frozen=True)
class HostClaims:
    """One host's claims as the store holds them, and the store's revision of that entry
    (0: the host never had an entry)."""

    host_id: str
    claims: tuple[Claim, ...] = ()
    revision: int = 0


@dataclass(frozen=True)
class ClaimWrite:
    """A compare-and-set: the host's claims become ``claims`` if the entry is still at
    ``expected_revision``."""

    host_id: str
    claims: tuple[Claim, ...]
    expected_revision: int


def kept(claims: Iterable[Claim], now_s: float, running_vm_ids: set[str], drop_vm_id: str = "") -> tuple[Claim, ...]:
    """The claims that still count: not expired, not for a VM the host reports, not ``drop_vm_id``."""
    return tuple(c for c in claims
                 if c.expires_at_s > now_s and c.vm_id not in running_vm_ids and c.vm_id != drop_vm_id)


class ClaimBook:
    """A replica's mirror of the shared claims, indexed by host and by VM."""

    def __init__(self) -> None:
        self._hosts: dict[str, HostClaims] = {}
        self._host_of: dict[str, set[str]] = {}  # vm id -> hosts with a claim for it
        self._claimed: set[str] = set()  # hosts with at least one claim

    def apply(self, entry: HostClaims) -> bool:
        """Take the store's entry for a host unless an equal or newer one is held already.
        Returns whether the mirror changed."""
        held = self._hosts.get(entry.host_id)
        if held is not None and held.revision >= entry.revision:
            return False
        self._index(held, entry)
        return True

    def forget(self, host_id: str, vm_ids: set[str]) -> bool:
        """Drop claims from the mirror only (they expired, or the host reports the VMs); the
        store forgets them with the host's next write. Returns whether any was dropped."""
        held = self._hosts.get(host_id)
        if held is None or not any(c.vm_id in vm_ids for c in held.claims):
            return False
        self._index(held, replace(held, claims=tuple(c for c in held.claims if c.vm_id not in vm_ids)))
        return True

    def _index(self, held: HostClaims | None, entry: HostClaims) -> None:
        for claim in held.claims if held else ():
            hosts = self._host_of.get(claim.vm_id, set())
            hosts.discard(entry.host_id)
            if not hosts:
                self._host_of.pop(claim.vm_id, None)
        for claim in entry.claims:
            self._host_of.setdefault(claim.vm_id, set()).add(entry.host_id)
        self._hosts[entry.host_id] = entry
        if entry.claims:
            self._claimed.add(entry.host_id)
        else:
            self._claimed.discard(entry.host_id)

    def entry(self, host_id: str) -> HostClaims:
        return self._hosts.get(host_id) or HostClaims(host_id)

    def on_host(self, host_id: str) -> tuple[Claim, ...]:
        return self.entry(host_id).claims

    def hosts_of(self, vm_id: str) -> set[str]:
        return set(self._host_of.get(vm_id, ()))

    def get(self, vm_id: str) -> Claim | None:
        """The VM's claim (the latest to expire, should a retried placement have left two)."""
        found = [c for h in self._host_of.get(vm_id, ()) for c in self._hosts[h].claims if c.vm_id == vm_id]
        return max(found, key=lambda c: c.expires_at_s, default=None)

    def expire(self, now_s: float) -> set[str]:
        """Drop expired claims from the mirror; returns the hosts whose claims changed."""
        changed = set()
        for host_id in list(self._claimed):
            expired = {c.vm_id for c in self._hosts[host_id].claims if c.expires_at_s <= now_s}
            if expired and self.forget(host_id, expired):
                changed.add(host_id)
        return changed

    def live(self, now_s: float) -> list[Claim]:
        self.expire(now_s)
        return [c for host_id in self._claimed for c in self._hosts[host_id].claims]
