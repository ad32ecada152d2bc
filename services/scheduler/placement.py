"""Pure placement: filters remove hosts, weighers rank the rest.

A filter is one predicate over a host state that returns why it rejects the host (or None).
A weigher returns one number per host; scores are normalised to 0..1 before weighting, so
weighers with different units can be combined. Every decision keeps a rejection trail so that
"no valid host" says which filter removed which host and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from services.scheduler.host_state import HostState
from shared.models import PlacementRequest


class WeighPolicy(StrEnum):
    SPREAD = "spread"  # prefer the emptiest host: fewer VMs lost per host failure
    PACK = "pack"  # prefer the fullest host: fewer hosts powered on


@dataclass(frozen=True)
class PlacementPolicy:
    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    weigh: WeighPolicy = WeighPolicy.SPREAD


@dataclass(frozen=True)
class Rejection:
    filter_name: str
    host_id: str
    reason: str


@dataclass(frozen=True)
class Decision:
    host: HostState | None
    rejections: tuple[Rejection, ...] = field(default_factory=tuple)
    candidates: int = 0

    def explain(self) -> str:
        """Readable trail: 'ram: h1 (needs 512 MiB, 256 MiB free); host_up: h2 (no heartbeat...)'."""
        if not self.rejections:
            return "no hosts are known to the scheduler"
        by_filter: dict[str, list[str]] = {}
        for r in self.rejections:
            by_filter.setdefault(r.filter_name, []).append(f"{r.host_id} ({r.reason})")
        return "; ".join(f"{name} removed {', '.join(hosts)}" for name, hosts in by_filter.items())


Filter = Callable[[HostState, PlacementRequest, PlacementPolicy], str | None]


def host_up(host: HostState, _req: PlacementRequest, _policy: PlacementPolicy) -> str | None:
    if not host.alive:
        return f"no heartbeat for {host.last_heartbeat_age_s:.0f} s"
    if not host.libvirt_ok:
        return "libvirt unreachable"
    return None


def host_enabled(host: HostState, _req: PlacementRequest, _policy: PlacementPolicy) -> str | None:
    return None if host.enabled else "disabled"


def cpu_capacity(host: HostState, req: PlacementRequest, policy: PlacementPolicy) -> str | None:
    limit = int(host.vcpus_total * policy.cpu_allocation_ratio)
    free = limit - host.vcpus_used
    if req.vcpus > free:
        return f"needs {req.vcpus} vCPU, {max(free, 0)} of {limit} free"
    return None


def ram_capacity(host: HostState, req: PlacementRequest, policy: PlacementPolicy) -> str | None:
    limit = int(host.memory_mib_total * policy.ram_allocation_ratio)
    free = limit - host.memory_mib_used
    if req.memory_mib > free:
        return f"needs {req.memory_mib} MiB, {max(free, 0)} of {limit} MiB free"
    return None


DEFAULT_FILTERS: tuple[tuple[str, Filter], ...] = (
    ("host_up", host_up),
    ("host_enabled", host_enabled),
    ("cpu", cpu_capacity),
    ("ram", ram_capacity),
)


def free_ram_weight(host: HostState, policy: PlacementPolicy) -> float:
    limit = host.memory_mib_total * policy.ram_allocation_ratio
    return (limit - host.memory_mib_used) / limit if limit else 0.0


def normalise(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high == low:
        return [0.0 for _ in values]
    return [(v - low) / (high - low) for v in values]


def choose_host(
    hosts: Sequence[HostState],
    req: PlacementRequest,
    policy: PlacementPolicy,
    filters: Sequence[tuple[str, Filter]] = DEFAULT_FILTERS,
) -> Decision:
    """Run every filter, then weigh the survivors. Deterministic: ties go to the lowest host id."""
    candidates = list(hosts)
    rejections: list[Rejection] = []
    for name, predicate in filters:
        kept = []
        for host in candidates:
            reason = predicate(host, req, policy)
            if reason is None:
                kept.append(host)
            else:
                rejections.append(Rejection(name, host.host_id, reason))
        candidates = kept
    if not candidates:
        return Decision(host=None, rejections=tuple(rejections))
    scores = normalise([free_ram_weight(h, policy) for h in candidates])
    if policy.weigh is WeighPolicy.PACK:
        scores = [1.0 - s for s in scores]
    ranked = sorted(zip(scores, candidates), key=lambda pair: pair[1].host_id)
    best = max(ranked, key=lambda pair: pair[0])  # max() keeps the first of equals
    return Decision(host=best[1], rejections=tuple(rejections), candidates=len(candidates))
