"""Request and response shapes of the storage routes (pools, images, volumes, snapshots), and
the two things those routes share: reading a VM they act on, and starting an operation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from services.api.models import Vm
from services.api.platform import Platform
from shared.auth import Principal
from shared.errors import Conflict, InvalidRequest, ServiceUnavailable
from shared.models import VmState
from shared.names import ORCHESTRATOR_QUEUE, operation_memo
from shared.operation_tags import kind_action, operation_summary, tagged
from shared.storage_models import (
    CloneMode,
    ImageFormat,
    ImageView,
    PoolKind,
    SnapshotView,
    VolumeKind,
    VolumeView,
    check_name,
    check_snapshot_name,
    check_volume_name,
)

_PATH = Field(default=None, min_length=1, max_length=4096)


def _as_value_error(check, value: str) -> str:
    try:
        return check(value)
    except InvalidRequest as exc:
        raise ValueError(exc.message) from None


class ImageCreate(BaseModel):
    """Import an image file (``source_path`` + ``format``) or make a template of a stopped VM
    (``from_vm``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1-63 letters, digits or '-'")
    description: str = Field(default="", max_length=500)
    source_path: str | None = Field(default=None, min_length=1, max_length=4096,
                                    description="absolute path inside an import directory of the storage service")
    format: ImageFormat | None = Field(default=None, description="what the file is: qcow2 or raw (it is checked)")
    from_vm: str | None = Field(default=None, max_length=64, description="id of a stopped VM to make a template of")
    min_memory_mib: int = Field(default=64, ge=1, le=1_048_576)
    min_disk_gib: int | None = Field(default=None, ge=1, le=65_536)
    kernel_path: str | None = _PATH
    initrd_path: str | None = _PATH
    cmdline: str = Field(default="", max_length=1024)
    boot_marker: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _as_value_error(lambda v: check_name("image", v), value)

    @model_validator(mode="after")
    def _one_source(self) -> ImageCreate:
        if (self.source_path is None) == (self.from_vm is None):
            raise ValueError("give either source_path (with format) or from_vm")
        if self.source_path is not None and self.format is None:
            raise ValueError("format is required with source_path (qcow2 or raw)")
        return self


class TemplateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = Field(default="", max_length=500)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _as_value_error(lambda v: check_name("image", v), value)


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    pool: str = Field(max_length=63, description="a pool from GET /v1/pools")
    size_gib: int = Field(ge=1, description="virtual size in GiB")
    image: str | None = Field(default=None, max_length=63, description="clone this image (or template)")
    clone: CloneMode = Field(default=CloneMode.THIN, description="thin (backed by the image) or full (a copy)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _as_value_error(check_volume_name, value)


class VolumeResize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size_gib: int = Field(ge=1, description="the new virtual size; volumes only grow")


class VolumeAttach(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vm_id: str = Field(max_length=64)


class SnapshotCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _as_value_error(check_snapshot_name, value)


class PoolPublic(BaseModel):
    name: str
    kind: PoolKind
    host_id: str | None
    path: str
    capacity_bytes: int
    available_bytes: int
    used_bytes: int
    volume_count: int
    image_count: int


class ImagePublic(BaseModel):
    name: str
    description: str
    kind: str
    min_memory_mib: int
    min_disk_gib: int
    boot: str
    virtual_size_gib: float
    file_size_bytes: int
    source_vm: str | None
    created_at: datetime | None

    @classmethod
    def of(cls, v: ImageView) -> ImagePublic:
        return cls(name=v.name, description=v.description, kind=v.kind, min_memory_mib=v.min_memory_mib,
                   min_disk_gib=v.min_disk_gib, boot=v.boot, virtual_size_gib=v.virtual_size_gib,
                   file_size_bytes=v.file_size_bytes, source_vm=v.source_vm, created_at=_time(v.created_at_s))


class VolumePublic(BaseModel):
    name: str
    pool: str
    kind: VolumeKind
    path: str
    size_gib: float
    allocated_bytes: int
    image: str | None
    clone: CloneMode | None
    vm_id: str | None
    host_id: str | None
    snapshot_count: int
    created_at: datetime | None

    @classmethod
    def of(cls, v: VolumeView) -> VolumePublic:
        return cls(name=v.name, pool=v.pool, kind=v.kind, path=v.path, size_gib=v.size_gib,
                   allocated_bytes=v.allocated_bytes, image=v.image, clone=v.clone, vm_id=v.vm_id,
                   host_id=v.host_id, snapshot_count=v.snapshot_count, created_at=_time(v.created_at_s))


class SnapshotPublic(BaseModel):
    name: str
    created_at: datetime
    disks: list[str]

    @classmethod
    def of(cls, s: SnapshotView) -> SnapshotPublic:
        return cls(name=s.name, created_at=_time(s.created_at_s), disks=list(s.disks))


class StorageOperationAccepted(BaseModel):
    operation_id: str
    target: str  # what it acts on: image/<name>, volume/<name>, snapshot/<name>


def _time(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


# -- shared by the storage routes ----------------------------------------------------------------


async def get_vm(p: Platform, vm_id: str, who: Principal) -> Vm:
    """Raises NotFound (404) for an unknown VM, or one ``who`` may not see."""
    return await asyncio.to_thread(p.inventory.get, vm_id, who.visible_tenant)


def require_state(vm: Vm, allowed: Iterable[VmState], action: str) -> None:
    """Raises Conflict (409) unless the VM is in one of ``allowed``. ``action`` reads before the
    VM: "take a snapshot of"."""
    allowed = tuple(allowed)
    if vm.state not in allowed:
        needs = " or ".join(s.value for s in allowed)
        raise Conflict(f"cannot {action} VM '{vm.name}' while it is {vm.state.value} (needs: {needs})")


async def _started(p: Platform, op_id: str) -> bool:
    """Whether the server has the workflow; True when nobody can tell (keep what it may settle)."""
    try:
        await p.temporal.get_workflow_handle(op_id).describe()
        return True
    except RPCError as probe:
        return probe.status != RPCStatusCode.NOT_FOUND
    except Exception:
        return True


def _tags(workflow: str, target: str, tenant: str, who: Principal, vm: Vm | None) -> dict:
    """Tags and memo of an operation on ``target`` (``volume/data-1``), of ``vm`` when it has one."""
    summary = operation_summary(kind_action(workflow), target.rpartition("/")[2], f"(vm {vm.name})" if vm else "",
                                tenant)
    return tagged(workflow, summary, vm_id=vm.id if vm else None, host_ids=(vm.host_id if vm else None,),
                  tenant=tenant, memo=operation_memo(tenant, who.is_admin))


async def start_operation(p: Platform, workflow: str, arg: object, op_id: str, target: str,
                          response: Response, tenant: str, reserved: str | None = None, *,
                          who: Principal, vm: Vm | None = None) -> StorageOperationAccepted:
    """Start the workflow under ``op_id`` as ``tenant``'s, started by ``who``, on ``vm`` if it acts
    on one; 202 with its Location. The same operation running already is a Conflict (409). The
    quota hold ``reserved`` (made for this operation) is released when it cannot start."""
    try:
        await p.temporal.start_workflow(workflow, arg, id=op_id, task_queue=ORCHESTRATOR_QUEUE,
                                        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                                        **_tags(workflow, target, tenant, who, vm))
    except WorkflowAlreadyStartedError as exc:
        if reserved is not None:
            await asyncio.to_thread(p.ledger.release, reserved)
        raise Conflict(f"operation {op_id} is already under way") from exc
    except Exception as exc:
        # The start may have reached the server all the same: the hold goes only when it did not,
        # else the operation settles it.
        if reserved is not None and not await _started(p, op_id):
            await asyncio.to_thread(p.ledger.release, reserved)
        message = exc.message if isinstance(exc, RPCError) else str(exc)
        raise ServiceUnavailable(f"could not start the operation: {message}") from exc
    response.status_code = 202
    response.headers["Location"] = f"/v1/operations/{op_id}"
    return StorageOperationAccepted(operation_id=op_id, target=target)
