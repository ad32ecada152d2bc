"""The scheduler's view of a host: what its heartbeat says plus what placement has claimed.

Liveness is decided here, before placement runs, so no filter ever does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.models import HostHeartbeat


@dataclass(frozen=True)
class Claim:
    """Capacity reserved for a VM between placement and the moment its domain shows up."""

    vm_id: str
    host_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    expires_at_s: float


@dataclass(frozen=True)
class HostState:
    host_id: str
    alive: bool
    enabled: bool
    libvirt_ok: bool
    domain_type: str
    vcpus_total: int
    memory_mib_total: int
    vcpus_used: int
    memory_mib_used: int
    domain_count: int
    last_heartbeat_age_s: float

    @property
    def up(self) -> bool:
        return self.alive and self.libvirt_ok


def build_host_states(
    heartbeats: Mapping[str, HostHeartbeat],
    claims: Iterable[Claim],
    now_s: float,
    heartbeat_timeout_s: float,
) -> list[HostState]:
    """Combine heartbeats and live claims. A claim stops counting once its VM appears in the
    host's heartbeat (the domain's own size counts from then on) or when it expires."""
    claims_by_host: dict[str, list[Claim]] = {}
    for claim in claims:
        if claim.expires_at_s > now_s:
            claims_by_host.setdefault(claim.host_id, []).append(claim)
    states = []
    for host_id, beat in sorted(heartbeats.items()):
        running = {d.vm_id for d in beat.domains}
        pending = [c for c in claims_by_host.get(host_id, []) if c.vm_id not in running]
        age_s = max(0.0, now_s - beat.sent_at_s)
        states.append(
            HostState(
                host_id=host_id,
                alive=age_s <= heartbeat_timeout_s,
                enabled=beat.enabled,
                libvirt_ok=beat.libvirt_ok,
                domain_type=beat.domain_type,
                vcpus_total=beat.vcpus,
                memory_mib_total=beat.memory_mib,
                vcpus_used=sum(d.vcpus for d in beat.domains) + sum(c.vcpus for c in pending),
                memory_mib_used=sum(d.memory_mib for d in beat.domains)
                + sum(c.memory_mib for c in pending),
                domain_count=len(beat.domains) + len(pending),
                last_heartbeat_age_s=age_s,
            )
        )
    return states
