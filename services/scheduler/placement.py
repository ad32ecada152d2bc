"""Pure placement: filters remove hosts, weighers rank the rest.

A filter is one predicate over a host state that returns why it rejects the host (or None).
A weigher returns one number per host; each weigher's numbers are normalised to 0..1 before they
are combined, so weighers with different units add up fairly. Every decision keeps a rejection
trail, so "no valid host" says which filter removed which host and why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from services.scheduler.host_state import HostState
from shared.models import GroupPolicy, PlacementRequest


class WeighPolicy(StrEnum):
    SPREAD = "spread"  # prefer the emptiest host: fewer VMs lost per host failure
    PACK = "pack"  # prefer the fullest host that fits: fewer hosts powered on


@dataclass(frozen=True)
class PlacementPolicy:
    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0
    weigh: WeighPolicy = WeighPolicy.SPREAD
    cluster_weigh: Mapping[str, WeighPolicy] = field(default_factory=dict)
    # How much a soft (anti-)affinity rule counts against the RAM weigher (whose weight is 1).
    soft_affinity_weight: float = 2.0

    def weigh_policy(self, cluster: str) -> WeighPolicy:
        return self.cluster_weigh.get(cluster, self.weigh)


@dataclass(frozen=True)
class PlacementContext:
    """Facts about the whole fleet that some filters need, computed once per decision."""

    policy: PlacementPolicy
    group_hosts: frozenset[str] = frozenset()  # hosts running members of the request's group


@dataclass(frozen=True)
class Rejection:
    filter_name: str
    host_id: str
    reason: str


@dataclass(frozen=True)
class Decision:
    host: HostState | None
    rejections: tuple[Rejection, ...] = ()
    candidates: int = 0

    def explain(self) -> str:
        """Readable trail: 'ram removed h1 (needs 512 MiB, ...); host_up removed h2 (...)'."""
        if not self.rejections:
            return "no hosts are known to the scheduler"
        by_filter: dict[str, list[str]] = {}
        for r in self.rejections:
            by_filter.setdefault(r.filter_name, []).append(f"{r.host_id} ({r.reason})")
        return "; ".join(f"{name} removed {', '.join(hosts)}" for name, hosts in by_filter.items())


Filter = Callable[[HostState, PlacementRequest, PlacementContext], str | None]


def host_up(host: HostState, _req: PlacementRequest, _ctx: PlacementContext) -> str | None:
    if not host.alive:
        return f"no heartbeat for {host.last_heartbeat_age_s:.0f} s"
    if not host.libvirt_ok:
        return "libvirt unreachable"
    return None


def requested_host(host: HostState, req: PlacementRequest, _ctx: PlacementContext) -> str | None:
    if host.host_id in req.exclude_hosts:
        return "excluded (the VM is there already)"
    if req.only_host is not None and host.host_id != req.only_host:
        return f"not the requested host {req.only_host}"
    return None


def host_enabled(host: HostState, _req: PlacementRequest, _ctx: PlacementContext) -> str | None:
    if host.enabled:
        return None
    return f"disabled: {host.disabled_reason}" if host.disabled_reason else "disabled"


def domain_type(host: HostState, req: PlacementRequest, _ctx: PlacementContext) -> str | None:
    if host.domain_type in req.domain_types:
        return None
    return f"runs {host.domain_type} guests, the image needs {' or '.join(req.domain_types)}"


def labels(host: HostState, req: PlacementRequest, _ctx: PlacementContext) -> str | None:
    if not req.required_labels or host.labels.issuperset(req.required_labels):
        return None
    return f"lacks label {', '.join(sorted(set(req.required_labels) - host.labels))}"


def cpu_capacity(host: HostState, req: PlacementRequest, ctx: PlacementContext) -> str | None:
    limit = int(host.vcpus_total * ctx.policy.cpu_allocation_ratio)
    free = limit - host.vcpus_used
    return f"needs {req.vcpus} vCPU, {max(free, 0)} of {limit} free" if req.vcpus > free else None


def ram_capacity(host: HostState, req: PlacementRequest, ctx: PlacementContext) -> str | None:
    limit = int(host.memory_mib_total * ctx.policy.ram_allocation_ratio)
    free = limit - host.memory_mib_used
    if req.memory_mib > free:
        return f"needs {req.memory_mib} MiB, {max(free, 0)} of {limit} MiB free"
    return None


def disk_capacity(host: HostState, req: PlacementRequest, ctx: PlacementContext) -> str | None:
    limit = int(host.disk_gib_total * ctx.policy.disk_allocation_ratio)
    free = limit - host.disk_gib_used
    return f"needs {req.disk_gib} GiB, {max(free, 0)} of {limit} GiB free" if req.disk_gib > free else None


def group_rule(host: HostState, req: PlacementRequest, ctx: PlacementContext) -> str | None:
    """Hard affinity: once a member runs somewhere, only its host(s) qualify.
    Hard anti-affinity: no host that already runs a member."""
    rule = req.group
    if rule is None or not rule.hard:
        return None
    here = host.group_members.get(rule.group_id, 0)
    if rule.policy is GroupPolicy.ANTI_AFFINITY and here:
        return f"anti-affinity group {rule.group_id} already has a member here"
    if rule.policy is GroupPolicy.AFFINITY and ctx.group_hosts and not here:
        return f"affinity group {rule.group_id} runs on {', '.join(sorted(ctx.group_hosts))}"
    return None


DEFAULT_FILTERS: tuple[tuple[str, Filter], ...] = (
    ("requested_host", requested_host),
    ("host_up", host_up),
    ("host_enabled", host_enabled),
    ("domain_type", domain_type),
    ("labels", labels),
    ("group", group_rule),
    ("cpu", cpu_capacity),
    ("ram", ram_capacity),
    ("disk", disk_capacity),
)


def ram_weight(host: HostState, _req: PlacementRequest, ctx: PlacementContext) -> float:
    """Free RAM fraction under spread, used fraction under pack, by the host's cluster policy."""
    limit = host.memory_mib_total * ctx.policy.ram_allocation_ratio
    free = (limit - host.memory_mib_used) / limit if limit else 0.0
    return free if ctx.policy.weigh_policy(host.cluster) is WeighPolicy.SPREAD else 1.0 - free


def soft_group_weight(host: HostState, req: PlacementRequest, _ctx: PlacementContext) -> float:
    rule = req.group
    if rule is None or rule.hard:
        return 0.0
    here = host.group_members.get(rule.group_id, 0)
    return float(here if rule.policy is GroupPolicy.AFFINITY else -here)


Weigher = Callable[[HostState, PlacementRequest, PlacementContext], float]


def default_weighers(policy: PlacementPolicy) -> tuple[tuple[Weigher, float], ...]:
    return ((ram_weight, 1.0), (soft_group_weight, policy.soft_affinity_weight))


def normalise(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high == low:
        return [0.0 for _ in values]
    return [(v - low) / (high - low) for v in values]


def context_for(hosts: Sequence[HostState], req: PlacementRequest, policy: PlacementPolicy) -> PlacementContext:
    if req.group is None:
        return PlacementContext(policy)
    gid = req.group.group_id
    return PlacementContext(policy, frozenset(h.host_id for h in hosts if h.group_members.get(gid)))


def choose_host(
    hosts: Sequence[HostState],
    req: PlacementRequest,
    policy: PlacementPolicy,
    filters: Sequence[tuple[str, Filter]] = DEFAULT_FILTERS,
) -> Decision:
    """Run every filter, then weigh the survivors. Deterministic: ties go to the lowest host id."""
    ctx = context_for(hosts, req, policy)
    candidates = list(hosts)
    rejections: list[Rejection] = []
    for name, predicate in filters:
        kept = []
        for host in candidates:
            reason = predicate(host, req, ctx)
            if reason is None:
                kept.append(host)
            else:
                rejections.append(Rejection(name, host.host_id, reason))
        candidates = kept
    if not candidates:
        return Decision(host=None, rejections=tuple(rejections))
    candidates.sort(key=lambda h: h.host_id)
    totals = [0.0] * len(candidates)
    for weigher, multiplier in default_weighers(policy):
        for i, score in enumerate(normalise([weigher(h, req, ctx) for h in candidates])):
            totals[i] += multiplier * score
    best = max(range(len(candidates)), key=lambda i: totals[i])  # max() keeps the first of equals
    return Decision(host=candidates[best], rejections=tuple(rejections), candidates=len(candidates))
