"""Quotas: what a tenant may hold, what one thing costs, and whether a request fits. Pure.

Every VM, volume, snapshot, template and network a tenant has, or is creating, is a hold: a
row with what it counts against the quota. ``reserved`` holds are being created (their
operation runs); ``used`` ones exist. A request fits when, for every resource it needs,
used + reserved + asked <= limit. A limit of None is no limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum


class Resource(StrEnum):
    VMS = "vms"
    VCPUS = "vcpus"
    MEMORY_MIB = "memory_mib"
    DISK_GIB = "disk_gib"  # root disks, data volumes and templates
    VOLUMES = "volumes"
    SNAPSHOTS = "snapshots"
    NETWORKS = "networks"


class HoldState(StrEnum):
    RESERVED = "reserved"
    USED = "used"


@dataclass(frozen=True)
class Amounts:
    """A count per resource; what one hold costs, or a tenant's total."""

    vms: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    volumes: int = 0
    snapshots: int = 0
    networks: int = 0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def get(self, resource: Resource) -> int:
        return getattr(self, resource.value)

    def asked(self) -> dict[Resource, int]:
        """The resources this amount needs (non-zero), in a fixed order."""
        return {r: self.get(r) for r in Resource if self.get(r)}

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    """A tenant's quota: None is no limit."""

    vms: int | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_gib: int | None = None
    volumes: int | None = None
    snapshots: int | None = None
    networks: int | None = None

    def get(self, resource: Resource) -> int | None:
        return getattr(self, resource.value)


@dataclass(frozen=True)
class Shortfall:
    resource: Resource
    asked: int
    limit: int
    used: int
    reserved: int

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used - self.reserved)

    def describe(self) -> str:
        return (f"{self.resource.value}: asked {self.asked}, {self.left} left of {self.limit} "
                f"({self.used} used, {self.reserved} reserved)")


def shortfalls(limits: Limits, used: Amounts, reserved: Amounts, asked: Amounts) -> list[Shortfall]:
    """Every resource the request would push over its limit; empty when it fits."""
    short = []
    for resource, amount in asked.asked().items():
        limit = limits.get(resource)
        if limit is None or amount <= 0:
            continue
        if used.get(resource) + reserved.get(resource) + amount > limit:
            short.append(Shortfall(resource, amount, limit, used.get(resource), reserved.get(resource)))
    return short


def over_limit(limits: Limits, used: Amounts, reserved: Amounts) -> list[str]:
    """Warnings for limits already below what the tenant holds: allowed, but nothing new fits."""
    warnings = []
    for resource in Resource:
        limit = limits.get(resource)
        held = used.get(resource) + reserved.get(resource)
        if limit is not None and held > limit:
            warnings.append(f"{resource.value}: the limit {limit} is below the {held} the tenant holds; "
                            "nothing new is allowed until it holds less")
    return warnings


# Hold keys: one per thing a tenant holds. A VM's key prefixes its snapshots', so releasing the
# VM releases them too; a volume's growth merges into the volume's hold when it succeeds.
def vm_hold(vm_id: str) -> str:
    return f"vm/{vm_id}"


def snapshot_hold(vm_id: str, name: str) -> str:
    return f"vm/{vm_id}/snapshot/{name}"


def volume_hold(name: str) -> str:
    return f"volume/{name}"


def volume_growth_hold(name: str) -> str:
    """One growth at a time per volume: a second resize while one runs is refused."""
    return f"volume/{name}/grow"


def image_hold(name: str) -> str:
    return f"image/{name}"


def network_hold(network_id: str) -> str:
    return f"network/{network_id}"


@dataclass(frozen=True)
class QuotaSettlement:
    """What an operation does with holds when it ends: the API reserves before it starts, the
    workflow settles. Every change is idempotent (a hold is committed or released once)."""

    commit_on_success: tuple[str, ...] = ()
    release_on_success: tuple[str, ...] = ()
    release_on_failure: tuple[str, ...] = ()


@dataclass(frozen=True)
class HoldChanges:
    """The argument of ``inventory.settle_quota``."""

    commit: tuple[str, ...] = ()
    release: tuple[str, ...] = ()
