"""The VM inventory: table model and the request/response shapes derived from it."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field as SqlField
from sqlmodel import SQLModel

from services.api.guest_config import CloudInit, NicPublic, NicRequest, check_nic_count
from shared.failover import CrashAction
from shared.models import GroupPolicy, GroupRule, VmState, VmSummary
from shared.storage_models import PoolKind

NAME_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
IMAGE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9=._-]{0,62}$")
NAME_RULE = "1-63 letters, digits or '-', starting and ending with a letter or digit"


def check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"name must be {NAME_RULE}")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class VmBase(SQLModel):
    name: str = SqlField(max_length=63)
    vcpus: int
    memory_mib: int
    disk_gib: int
    image: str = SqlField(max_length=63)
    storage: PoolKind = PoolKind.SHARED
    ha: bool = False
    restart_priority: int = 0
    on_crash: CrashAction = CrashAction.RESTART
    hostname: str | None = SqlField(default=None, max_length=63)


class Vm(VmBase, table=True):
    __tablename__ = "vms"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_vms_tenant_name"),)

    id: str = SqlField(default_factory=lambda: str(uuid.uuid4()), primary_key=True)
    tenant: str = SqlField(index=True, max_length=63)
    placement_group_id: str | None = SqlField(default=None, foreign_key="placement_groups.id", index=True)
    required_labels: list[str] = SqlField(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: VmState = VmState.PROVISIONING
    host_id: str | None = None
    last_operation_id: str | None = None
    error: str | None = None
    # When the guest crashed lately (epoch seconds): how many restarts in place its policy allows.
    crash_history: list[float] = SqlField(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The cloud-init seed's contents (with hostname): kept so that a restart elsewhere rebuilds it.
    user_data: str | None = SqlField(default=None, sa_column=Column(Text, nullable=True))
    ssh_authorized_keys: list[str] = SqlField(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = SqlField(default_factory=utcnow)
    updated_at: datetime = SqlField(default_factory=utcnow)


class VmCreate(CloudInit):
    """Limits that depend on configuration or on the image are checked by the route. A VM gets a
    cloud-init seed disk when it asks for any of hostname, user_data or ssh_authorized_keys."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=NAME_RULE)
    vcpus: int = Field(ge=1, description="virtual CPUs")
    memory_mib: int = Field(ge=1, description="guest memory in MiB")
    disk_gib: int = Field(ge=1, description="root disk size in GiB")
    image: str = Field(description="name of an image from GET /v1/images")
    placement_group_id: str | None = Field(default=None, description="a group from /v1/placement-groups")
    required_labels: list[str] = Field(default=[], max_length=16, description="host labels the VM needs")
    storage: PoolKind = Field(default=PoolKind.SHARED, description=(
        "where the root disk lives: 'shared' (every host sees it) or 'local' (the host's own pool; "
        "a migration copies it along)"))
    ha: bool = Field(default=False, description=(
        "highly available: when its host fails, the host is fenced and the VM restarts on another "
        "host (needs storage 'shared')"))
    restart_priority: int = Field(default=0, ge=0, le=1000, description=(
        "failover order: higher restarts first"))
    on_crash: CrashAction = Field(default=CrashAction.RESTART, description=(
        "when the guest crashes: 'restart' it in place (at most 3 times in 10 minutes) or 'none'"))
    networks: list[NicRequest] = Field(default=[], description=(
        "one NIC per entry, in this order: a network from /v1/networks and optionally its address"))

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[NicRequest]) -> list[NicRequest]:
        return check_nic_count(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("required_labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if not LABEL_PATTERN.fullmatch(label):
                raise ValueError(f"label {label[:70]!r} must be 1-63 letters, digits or '=._-'")
        return sorted(set(value))

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not IMAGE_PATTERN.fullmatch(value):
            raise ValueError("image must be an image name from GET /v1/images")
        return value


class VmPublic(VmBase):
    id: str
    tenant: str
    placement_group_id: str | None
    required_labels: list[str]
    state: VmState
    host_id: str | None
    last_operation_id: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    nics: list[NicPublic] = []


class PowerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=30.0, ge=0, le=3600, description="graceful shutdown wait")
    force: bool = Field(default=False, description="power off at once, no graceful shutdown")


class OperationAccepted(BaseModel):
    operation_id: str
    vm: VmPublic


class PlacementGroup(SQLModel, table=True):
    __tablename__ = "placement_groups"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_placement_groups_tenant_name"),)

    id: str = SqlField(default_factory=lambda: f"pg-{uuid.uuid4().hex[:12]}", primary_key=True)
    tenant: str = SqlField(index=True, max_length=63)
    name: str = SqlField(max_length=63)
    policy: GroupPolicy
    hard: bool = True
    created_at: datetime = SqlField(default_factory=utcnow)


class PlacementGroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=NAME_RULE)
    policy: GroupPolicy = Field(description="affinity: members together; anti-affinity: apart")
    hard: bool = Field(default=True, description="hard: a rule placement never breaks; soft: a preference")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


class GroupMember(BaseModel):
    vm_id: str
    name: str
    host_id: str | None
    state: VmState


class PlacementGroupPublic(BaseModel):
    id: str
    name: str
    policy: GroupPolicy
    hard: bool
    created_at: datetime
    members: list[GroupMember] = []


def vm_summary(vm: Vm, group: GroupRule | None) -> VmSummary:
    """The VM as workflows get it: what placement and the hosts need, nothing more."""
    return VmSummary(vm.id, vm.tenant, vm.name, vm.state, vm.host_id, vm.vcpus, vm.memory_mib, vm.disk_gib,
                     tuple(vm.required_labels), group, vm.storage, vm.image, vm.ha, vm.restart_priority)


class MigrateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_host_id: str | None = Field(default=None, description="default: the scheduler picks a host")
    completion_timeout_s: float = Field(default=120.0, gt=0, le=3600,
                                        description="abort (the VM stays where it is) if not done by then")
    post_copy: bool = Field(default=False, description="switch to post-copy when pre-copy stalls")
    bandwidth_mib_s: int = Field(default=0, ge=0, le=100_000, description="cap on the copy rate; 0: none")
