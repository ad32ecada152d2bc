"""Values that cross service boundaries: activity arguments and results, heartbeats, progress.

Frozen dataclasses with units in their names. Pure: safe to import inside Temporal workflows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from shared.networks import NicSpec
from shared.storage_models import PoolKind


class VmState(StrEnum):
    PROVISIONING = "provisioning"
    RUNNING = "running"
    STOPPED = "stopped"
    STOPPING = "stopping"
    STARTING = "starting"
    REBOOTING = "rebooting"
    MIGRATING = "migrating"
    DELETING = "deleting"
    RECOVERING = "recovering"  # restarted after a crash, a lost domain or its host's failure
    CRASHED = "crashed"  # the guest (its QEMU) died without being asked to
    ERROR = "error"


# States no operation holds: what libvirt reports may change them. Any other state belongs to
# the workflow that set it, and only that workflow moves the VM on.
SETTLED_STATES = (VmState.RUNNING, VmState.STOPPED, VmState.CRASHED, VmState.ERROR)


class PowerAction(StrEnum):
    START = "start"
    STOP = "stop"
    REBOOT = "reboot"


@dataclass(frozen=True)
class VmSpec:
    vcpus: int
    memory_mib: int
    disk_gib: int
    image: str
    storage: PoolKind = PoolKind.SHARED  # where the root disk lives: the shared pool or the host's own


class GroupPolicy(StrEnum):
    AFFINITY = "affinity"  # members together on one host
    ANTI_AFFINITY = "anti-affinity"  # members on different hosts


@dataclass(frozen=True)
class GroupRule:
    """The placement group a VM joins: hard rules filter hosts, soft ones only weigh them."""

    group_id: str
    policy: GroupPolicy
    hard: bool = True


@dataclass(frozen=True)
class PlacementRequest:
    vm_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int  # on the host's own storage: 0 when the VM's disks are on the shared pool
    domain_types: tuple[str, ...] = ("kvm", "qemu")
    required_labels: tuple[str, ...] = ()
    group: GroupRule | None = None
    exclude_hosts: tuple[str, ...] = ()  # e.g. the source of a migration
    only_host: str | None = None  # an operator's explicit choice, still checked by every filter


@dataclass(frozen=True)
class Placement:
    vm_id: str
    host_id: str
    domain_type: str
    migration_uri: str = ""


@dataclass(frozen=True)
class ClaimRelease:
    vm_id: str
    host_id: str = ""  # where it was placed, when the caller knows: found even before this replica saw it


@dataclass(frozen=True)
class BootSpec:
    """Direct kernel boot: what an image needs besides its disk."""

    kernel_path: str
    initrd_path: str
    cmdline: str


@dataclass(frozen=True)
class Image:
    name: str
    description: str
    disk_path: str
    virtual_size_gib: int
    min_memory_mib: int
    min_disk_gib: int
    boot: BootSpec | None = None
    boot_marker: str | None = None
    domain_types: tuple[str, ...] = ("kvm", "qemu")  # the virtualisation types it runs under


@dataclass(frozen=True)
class ImageList:
    images: tuple[Image, ...]


@dataclass(frozen=True)
class ImageRef:
    name: str


@dataclass(frozen=True)
class VolumeRequest:
    vm_id: str
    image: str
    disk_gib: int
    pool: str | None = None  # None: the shared pool


@dataclass(frozen=True)
class Volume:
    name: str
    path: str
    size_gib: int
    image: Image
    pool: str = ""


@dataclass(frozen=True)
class VolumeRef:
    vm_id: str


@dataclass(frozen=True)
class RootDisk:
    """Where a VM's root volume is: a pool, and the host whose local pool it is (None: shared)."""

    vm_id: str
    pool: str
    path: str
    host_id: str | None
    snapshot_count: int = 0
    # Data volumes attached to the VM from a host's own pool: a move does not carry them.
    local_data_volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RootCopy:
    """A VM's root volume copied from one pool into another (a move to a host with its own disk)."""

    vm_id: str
    from_pool: str
    to_pool: str


@dataclass(frozen=True)
class RootDiskRef:
    """A VM's root volume in one pool (a copy being made, or one left behind)."""

    vm_id: str
    pool: str


@dataclass(frozen=True)
class DomainSpec:
    vm_id: str
    vm_name: str
    tenant: str
    vcpus: int
    memory_mib: int
    disk_path: str
    domain_type: str
    boot: BootSpec | None = None
    disk_gib: int = 0  # what the VM takes of the host's own storage (0: its disks are shared)
    group_id: str | None = None
    nics: tuple[NicSpec, ...] = ()
    seed: bool = False  # attach the VM's cloud-init seed (written by host.prepare_vm)


@dataclass(frozen=True)
class DomainRef:
    vm_id: str


@dataclass(frozen=True)
class StopRequest:
    vm_id: str
    timeout_s: float = 30.0
    force: bool = False


@dataclass(frozen=True)
class BootWaitRequest:
    """Wait until the domain runs and, if the image prints one, its boot marker shows up
    ``min_marker_count`` times on the serial console."""

    vm_id: str
    timeout_s: float
    boot_marker: str | None = None
    min_marker_count: int = 1


@dataclass(frozen=True)
class DomainStatus:
    vm_id: str
    state: str  # libvirt state name: running, shutoff, paused, ... or "absent"
    marker_count: int = 0


@dataclass(frozen=True)
class DomainSummary:
    vm_id: str
    state: str
    vcpus: int
    memory_mib: int
    disk_gib: int = 0
    group: str | None = None
    reason: str = ""  # why a shut-off domain is off: shutdown, destroyed, crashed, failed, ...
    managed: bool = True  # vmflow defined it (it carries vmflow's metadata)


@dataclass(frozen=True)
class HostHeartbeat:
    host_id: str
    sent_at_s: float
    libvirt_ok: bool
    domain_type: str
    vcpus: int
    memory_mib: int  # what guests may use: the host's memory less its reserve
    domains: tuple[DomainSummary, ...] = ()
    disk_gib: int = 0
    labels: tuple[str, ...] = ()
    cluster: str = "default"
    migration_uri: str = ""  # how other hosts' libvirtd reach this one for migration
    # When this host last reached each peer's libvirtd over the hosts' network: the second
    # liveness channel, independent of the peer's own heartbeat.
    peers_reached: tuple[PeerReach, ...] = ()
    worker_started_at_s: float = 0.0
    # The peers this host probes, of which ``peers_reached`` speaks; None: every peer it knows.
    # In a large fleet each host watches a few (its successors in the ring of host ids), so a
    # beat stays small and every host still has as many witnesses.
    peers_watched: tuple[str, ...] | None = None
    # The beat's number in its worker's run (a run is told by ``worker_started_at_s``): which of
    # two beats is newer, whatever the host's clock did in between. 0: a worker that numbers none.
    seq: int = 0

    def supersedes(self, other: HostHeartbeat) -> bool:
        """Whether this beat is newer than ``other`` of the same host (beats come by two paths,
        so one may arrive twice or late). Within a worker's run by number, so a clock stepped
        back while it runs changes nothing; across runs (or unnumbered) by the host's clock."""
        if self.seq and other.seq and self.worker_started_at_s == other.worker_started_at_s:
            return self.seq > other.seq
        return (self.worker_started_at_s, self.sent_at_s) > (other.worker_started_at_s, other.sent_at_s)


@dataclass(frozen=True)
class PeerReach:
    host_id: str
    reached_at_s: float


class HostMode(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # no new VMs; those there stay
    MAINTENANCE = "maintenance"  # disabled, and its VMs are being (or were) moved away
    MAINTENANCE_FAILED = "maintenance_failed"  # some VM could not move; the reason says which
    FENCING = "fencing"  # declared failed; being powered off before its VMs start elsewhere
    FENCED = "fenced"  # powered off (or confirmed off by an operator); its HA VMs restart elsewhere
    FENCE_FAILED = "fence_failed"  # fencing kept failing: nothing restarts until an operator confirms


@dataclass(frozen=True)
class HostAdmin:
    """An operator's say over a host, kept apart from what the host reports."""

    host_id: str
    enabled: bool
    reason: str = ""
    mode: HostMode | None = None  # None: ACTIVE when enabled, else DISABLED
    operation_id: str = ""  # the operation that put the host in this mode (a failover, ...)


@dataclass(frozen=True)
class Allocation:
    vm_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int  # of the host's own storage
    kind: str  # "domain" (the host reports it) or "claim" (placed, not reported yet)
    group: str | None = None


@dataclass(frozen=True)
class HostView:
    """A host as operators see it: state, capacity, what is used (running plus claimed)."""

    host_id: str
    state: str  # up, down, disabled
    domain_type: str
    vcpus_total: int
    memory_mib_total: int
    disk_gib_total: int
    vcpus_used: int
    memory_mib_used: int
    disk_gib_used: int
    domain_count: int
    last_heartbeat_at_s: float
    last_heartbeat_age_s: float
    labels: tuple[str, ...] = ()
    cluster: str = "default"
    disabled_reason: str = ""
    allocations: tuple[Allocation, ...] = ()
    state_reason: str = ""  # why a host is failed, fenced, silent, ...
    operation_id: str = ""  # the failover (or maintenance) that put it in its state
    liveness: str = "unknown"  # the liveness monitor's verdict: up, worker_silent, failed, held


@dataclass(frozen=True)
class HostRef:
    host_id: str


@dataclass(frozen=True)
class HostQuery:
    offset: int = 0
    limit: int = 500  # a page stays well under NATS' 1 MB message limit


@dataclass(frozen=True)
class HostList:
    hosts: tuple[HostView, ...]
    total: int = 0


@dataclass(frozen=True)
class VmRecordUpdate:
    """Inventory change requested by a workflow; ``None`` fields stay as they are."""

    vm_id: str
    op_id: str
    step: str
    state: VmState | None = None
    host_id: str | None = None
    error: str | None = None
    from_host_id: str | None = None  # where a move left from, when the caller knows (else read first)


@dataclass(frozen=True)
class VmRef:
    """Remove a VM from the inventory: it was deleted, or its provisioning failed (``error``)."""

    vm_id: str
    op_id: str = ""
    error: str | None = None


@dataclass(frozen=True)
class ProvisionInput:
    vm_id: str
    vm_name: str
    tenant: str
    spec: VmSpec
    boot_timeout_s: float = 120.0
    domain_types: tuple[str, ...] = ("kvm", "qemu")
    required_labels: tuple[str, ...] = ()
    group: GroupRule | None = None


@dataclass(frozen=True)
class DeleteInput:
    vm_id: str
    tenant: str
    host_id: str | None


@dataclass(frozen=True)
class PowerInput:
    vm_id: str
    tenant: str
    action: PowerAction
    host_id: str
    boot_marker: str | None = None
    timeout_s: float = 30.0
    force: bool = False
    boot_timeout_s: float = 120.0


@dataclass(frozen=True)
class OperationProgress:
    kind: str
    vm_id: str
    step: str
    steps_done: tuple[str, ...] = field(default_factory=tuple)
    host_id: str | None = None
    details: tuple[str, ...] = ()  # readable lines, e.g. each VM's fate during host maintenance


@dataclass(frozen=True)
class BeginOperation:
    """Mark a VM busy with ``op_id`` if it is in one of ``allowed``; idempotent for that op."""

    vm_id: str
    op_id: str
    allowed: tuple[VmState, ...]
    new_state: VmState


@dataclass(frozen=True)
class VmSummary:
    vm_id: str
    tenant: str
    name: str
    state: VmState
    host_id: str | None
    vcpus: int
    memory_mib: int
    disk_gib: int
    required_labels: tuple[str, ...] = ()
    group: GroupRule | None = None
    storage: PoolKind = PoolKind.SHARED
    image: str = ""
    ha: bool = False
    restart_priority: int = 0


@dataclass(frozen=True)
class VmList:
    vms: tuple[VmSummary, ...]
