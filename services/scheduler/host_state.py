"""The scheduler's view of a host: what its heartbeat says, what operators decided (enabled or
not), and what placement has claimed but the host does not report yet.

Liveness is decided here, before placement runs, so no filter ever does I/O or reads a clock.
A decision reads the fleet through ``JudgedHosts``, which judges a host when placement reads
it: a decision that examines 300 of 10,000 hosts judges 300.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

from shared.models import Allocation, HostAdmin, HostHeartbeat


@dataclass(frozen=True)
class Claim:
    """Capacity reserved for a VM between placement and the moment its domain shows up."""

    vm_id: str
    host_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    expires_at_s: float
    group: str | None = None


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
    disk_gib_total: int = 0
    disk_gib_used: int = 0
    labels: frozenset[str] = frozenset()
    cluster: str = "default"
    disabled_reason: str = ""
    group_members: Mapping[str, int] = field(default_factory=dict)  # group id -> VMs here
    allocations: tuple[Allocation, ...] = ()

    @property
    def up(self) -> bool:
        return self.alive and self.libvirt_ok


def host_allocations(beat: HostHeartbeat, claims: Iterable[Claim]) -> tuple[Allocation, ...]:
    """Domains the host reports, plus claims for VMs it does not report yet (counted once)."""
    reported = [
        Allocation(d.vm_id, d.vcpus, d.memory_mib, d.disk_gib, "domain", d.group) for d in beat.domains
    ]
    running = {d.vm_id for d in beat.domains}
    pending = [
        Allocation(c.vm_id, c.vcpus, c.memory_mib, c.disk_gib, "claim", c.group)
        for c in claims
        if c.vm_id not in running
    ]
    return (*reported, *pending)


def build_host_states(
    heartbeats: Mapping[str, HostHeartbeat],
    claims: Iterable[Claim],
    now_s: float,
    heartbeat_timeout_s: float,
    admin: Mapping[str, HostAdmin] | None = None,
) -> list[HostState]:
    """One state per known host. Expired claims are ignored."""
    claims_by_host: dict[str, list[Claim]] = {}
    for claim in claims:
        if claim.expires_at_s > now_s:
            claims_by_host.setdefault(claim.host_id, []).append(claim)
    admin = admin or {}
    return [
        host_state(beat, claims_by_host.get(host_id, ()), admin.get(host_id), now_s, heartbeat_timeout_s)
        for host_id, beat in sorted(heartbeats.items())
    ]


def with_liveness(state: HostState, beat: HostHeartbeat, now_s: float, heartbeat_timeout_s: float) -> HostState:
    """The same state judged at ``now_s``: a host whose heartbeat is too old is not alive."""
    age_s = max(0.0, now_s - beat.sent_at_s)
    alive = age_s <= heartbeat_timeout_s
    if alive == state.alive and (alive or age_s == state.last_heartbeat_age_s):
        return state
    return replace(state, alive=alive, last_heartbeat_age_s=age_s)


def host_state(beat: HostHeartbeat, claims: Iterable[Claim], admin: HostAdmin | None, now_s: float,
               heartbeat_timeout_s: float) -> HostState:
    allocations = host_allocations(beat, claims)
    groups: dict[str, int] = {}
    for a in allocations:
        if a.group:
            groups[a.group] = groups.get(a.group, 0) + 1
    age_s = max(0.0, now_s - beat.sent_at_s)
    return HostState(
        host_id=beat.host_id,
        alive=age_s <= heartbeat_timeout_s,
        enabled=admin.enabled if admin else True,
        libvirt_ok=beat.libvirt_ok,
        domain_type=beat.domain_type,
        vcpus_total=beat.vcpus,
        memory_mib_total=beat.memory_mib,
        vcpus_used=sum(a.vcpus for a in allocations),
        memory_mib_used=sum(a.memory_mib for a in allocations),
        domain_count=len(allocations),
        last_heartbeat_age_s=age_s,
        disk_gib_total=beat.disk_gib,
        disk_gib_used=sum(a.disk_gib for a in allocations),
        labels=frozenset(beat.labels),
        cluster=beat.cluster,
        disabled_reason=admin.reason if admin and not admin.enabled else "",
        group_members=groups,
        allocations=allocations,
    )


class JudgedHosts:
    """The scheduler's host states as placement reads them (``placement.Fleet``): in host id
    order, each judged alive or not at ``now_s`` when it is read, and the hosts of a group
    looked up in an index instead of found by reading every host. A view: it copies nothing,
    so it is valid for one decision, while the states it reads do not change."""

    def __init__(self, order: Sequence[str], states: Mapping[str, HostState],
                 heartbeats: Mapping[str, HostHeartbeat], groups: Mapping[str, set[str]],
                 now_s: float, heartbeat_timeout_s: float) -> None:
        self._order = order
        self._states = states
        self._heartbeats = heartbeats
        self._groups = groups
        self._now_s = now_s
        self._timeout_s = heartbeat_timeout_s

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> HostState:
        host_id = self._order[index]
        state = self._states[host_id]
        if state.alive and self._now_s - self._heartbeats[host_id].sent_at_s <= self._timeout_s:
            return state  # still alive: what with_liveness would return, for less (the common case)
        return self._judged(host_id)

    def get(self, host_id: str) -> HostState | None:
        return self._judged(host_id) if host_id in self._states else None

    def group_hosts(self, group_id: str) -> frozenset[str]:
        return frozenset(self._groups.get(group_id, ()))

    def _judged(self, host_id: str) -> HostState:
        return with_liveness(self._states[host_id], self._heartbeats[host_id], self._now_s, self._timeout_s)


def index_groups(groups: MutableMapping[str, set[str]], old: HostState | None, new: HostState) -> None:
    """Keep ``groups`` (group id -> hosts running members) right after a host's state changed
    from ``old`` (None: a new host) to ``new``."""
    for group_id in old.group_members if old is not None else ():
        if group_id not in new.group_members:
            hosts = groups.get(group_id)
            if hosts is not None:
                hosts.discard(new.host_id)
                if not hosts:
                    del groups[group_id]
    for group_id, members in new.group_members.items():
        if members:
            groups.setdefault(group_id, set()).add(new.host_id)
