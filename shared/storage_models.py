"""Values of the storage domain that cross service boundaries (pools, images, volumes,
snapshots), the naming rules every service applies to them, and their event subjects.

Frozen dataclasses with units in their names. Pure: safe to import inside Temporal workflows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shared import subjects
from shared.errors import InvalidRequest
from shared.quota import QuotaSettlement

NAME_RULE = "1-63 letters, digits or '-', starting and ending with a letter or digit"
SNAPSHOT_RULE = "1-63 letters, digits, '-' or '_', starting with a letter and ending with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# A leading letter: qemu-img also finds snapshots by their numeric id, so "1" could name another.
_SNAPSHOT = re.compile(r"[A-Za-z]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
ROOT_VOLUME = re.compile(r"vm-([0-9a-f-]{36})-root")


def check_name(kind: str, value: str) -> str:
    """A volume, image or pool name: safe as a file name, a NATS subject token and a workflow id
    part. Raises InvalidRequest naming the rule."""
    if not _NAME.fullmatch(value):
        raise InvalidRequest(f"{kind} name must be {NAME_RULE}")
    return value


def check_volume_name(value: str) -> str:
    check_name("volume", value)
    if ROOT_VOLUME.fullmatch(value):
        raise InvalidRequest("volume names of the form vm-<id>-root are reserved for VM root disks")
    return value


def check_snapshot_name(value: str) -> str:
    if not _SNAPSHOT.fullmatch(value):
        raise InvalidRequest(f"snapshot name must be {SNAPSHOT_RULE}")
    return value


def root_vm_id(volume_name: str) -> str | None:
    """The VM a root volume belongs to; None for any other volume."""
    match = ROOT_VOLUME.fullmatch(volume_name)
    return match.group(1) if match else None


def _subject_token(name: str) -> str:
    # Older image names may hold dots, which NATS reads as token separators.
    return name.replace(".", "_")


def image_event(pool: str, image: str, event_type: str) -> str:
    return f"{subjects.EVENTS_ROOT}.image.{_subject_token(pool)}.{_subject_token(image)}.{event_type}"


def volume_event(pool: str, volume: str, event_type: str) -> str:
    return subjects.volume_event(pool, volume, event_type)


class PoolKind(StrEnum):
    SHARED = "shared"  # visible to every host (NFS-like)
    LOCAL = "local"  # one host's own disk


def local_pool_name(host_id: str) -> str:
    return f"local-{host_id}"


class ImageFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


class CloneMode(StrEnum):
    THIN = "thin"  # a qcow2 overlay backed by the image
    FULL = "full"  # an independent copy


class VolumeKind(StrEnum):
    ROOT = "root"  # a VM's boot disk, made and removed with the VM
    DATA = "data"


# -- reads (NATS request/reply with the storage service) -------------------------------------


@dataclass(frozen=True)
class PoolView:
    name: str
    kind: PoolKind
    host_id: str | None
    path: str
    capacity_bytes: int  # size of the filesystem holding the pool
    available_bytes: int  # what the filesystem still has free for the pool
    used_bytes: int  # space the pool's files really occupy
    volume_count: int
    image_count: int


@dataclass(frozen=True)
class PoolList:
    pools: tuple[PoolView, ...]


@dataclass(frozen=True)
class VolumeView:
    name: str
    pool: str
    path: str
    kind: VolumeKind
    size_gib: float  # virtual size
    allocated_bytes: int
    image: str | None = None  # image it was cloned from, if any
    clone: CloneMode | None = None
    vm_id: str | None = None  # the VM a root volume belongs to, or a data volume is attached to
    host_id: str | None = None  # the only host that reaches a local pool's volume
    snapshot_count: int = 0
    created_at_s: float | None = None


@dataclass(frozen=True)
class VolumeList:
    volumes: tuple[VolumeView, ...]


@dataclass(frozen=True)
class NameRef:
    """An image or a volume, by name."""

    name: str


@dataclass(frozen=True)
class ImageView:
    name: str
    description: str
    kind: str  # base (installed), imported, template
    disk_path: str
    virtual_size_gib: float
    file_size_bytes: int
    min_memory_mib: int
    min_disk_gib: int
    boot: str  # "kernel" (direct kernel boot) or "disk"
    boot_marker: str | None = None
    source_vm: str | None = None
    created_at_s: float | None = None


@dataclass(frozen=True)
class ImageViewList:
    images: tuple[ImageView, ...]


@dataclass(frozen=True)
class ImageUsage:
    name: str
    volumes: tuple[str, ...]  # volumes backed by the image


@dataclass(frozen=True)
class VmDisksRef:
    vm_id: str


@dataclass(frozen=True)
class SnapshotView:
    name: str
    created_at_s: float
    disks: tuple[str, ...]  # volumes holding it: the root disk and data volumes attached then


@dataclass(frozen=True)
class SnapshotList:
    vm_id: str
    snapshots: tuple[SnapshotView, ...]


# -- requests (NATS checks and activity arguments) -------------------------------------------


@dataclass(frozen=True)
class ImportRequest:
    name: str
    source_path: str
    format: ImageFormat
    description: str = ""
    min_memory_mib: int = 64
    min_disk_gib: int | None = None  # None: the image's virtual size, rounded up
    kernel_path: str | None = None
    initrd_path: str | None = None
    cmdline: str = ""
    boot_marker: str | None = None


@dataclass(frozen=True)
class ImportCheck:
    format: ImageFormat
    virtual_size_gib: float
    file_size_bytes: int


@dataclass(frozen=True)
class TemplateRequest:
    """Flatten the stopped VM's root disk into a new image that boots like ``source_image``."""

    name: str
    vm_id: str
    vm_name: str
    source_image: str
    description: str = ""


@dataclass(frozen=True)
class VolumeCreateRequest:
    name: str
    pool: str
    size_gib: int
    image: str | None = None
    clone: CloneMode = CloneMode.THIN


@dataclass(frozen=True)
class VolumeResizeRequest:
    name: str
    size_gib: int


@dataclass(frozen=True)
class VolumeDeleteRequest:
    name: str
    # The VM the volume still names as its owner, checked by the caller to be gone.
    stale_attachment: str | None = None


@dataclass(frozen=True)
class AttachmentClaim:
    volume: str
    vm_id: str
    stale_attachment: str | None = None
    host_id: str | None = None  # the VM's host, which must reach the volume's pool


@dataclass(frozen=True)
class DiskAttachment:
    """A host attaches or detaches ``disk_path`` on the domain of ``vm_id``: live and in the
    persistent definition while it runs, only in the definition while it is stopped."""

    vm_id: str
    disk_path: str
    timeout_s: float = 30.0


@dataclass(frozen=True)
class SnapshotRequest:
    vm_id: str
    name: str


@dataclass(frozen=True)
class OperationReport:
    """The outcome of a storage operation, published as ``vmflow.evt.op.<tenant>.<op>.<type>``."""

    tenant: str
    op_id: str
    kind: str
    outcome: str  # succeeded, failed
    target: str
    vm_id: str | None = None
    error: str | None = None


# -- workflow inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportImageInput:
    tenant: str
    request: ImportRequest
    quota: QuotaSettlement | None = None


@dataclass(frozen=True)
class TemplateInput:
    tenant: str
    request: TemplateRequest
    quota: QuotaSettlement | None = None


@dataclass(frozen=True)
class DeleteImageInput:
    tenant: str
    name: str
    quota: QuotaSettlement | None = None


@dataclass(frozen=True)
class CreateVolumeInput:
    tenant: str
    request: VolumeCreateRequest
    quota: QuotaSettlement | None = None


@dataclass(frozen=True)
class ResizeVolumeInput:
    tenant: str
    request: VolumeResizeRequest
    quota: QuotaSettlement | None = None


@dataclass(frozen=True)
class DeleteVolumeInput:
    tenant: str
    request: VolumeDeleteRequest
    quota: QuotaSettlement | None = None


@dataclass(frozen=True)
class AttachmentInput:
    """Attach or detach ``volume`` on the VM's host. ``disk_path`` is the volume's file (the
    attach workflow learns it from its claim)."""

    tenant: str
    volume: str
    vm_id: str
    host_id: str
    disk_path: str = ""
    stale_attachment: str | None = None
    timeout_s: float = 30.0


@dataclass(frozen=True)
class SnapshotInput:
    tenant: str
    vm_id: str
    name: str
    quota: QuotaSettlement | None = None
