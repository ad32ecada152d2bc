"""Typed events: one dataclass per fact, its subject, and one helper to publish it.

The envelope (id, type, subject, source, time_s, data) is ``shared.messaging.EventPublisher``'s;
``data`` is the dataclass as JSON. Consumers turn an envelope back into its type with
``decode``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared import codec, subjects

# libvirt lifecycle events a host-worker forwards, by the event type in their subject.
LIFECYCLE_TYPES = frozenset({"defined", "undefined", "started", "suspended", "resumed", "stopped",
                             "shutdown", "pmsuspended", "crashed"})


@dataclass(frozen=True)
class DomainLifecycle:
    """libvirt said something happened to a domain on a host (``reason``: libvirt's detail, e.g.
    stopped/shutdown, stopped/destroyed, stopped/failed when QEMU died)."""

    vm_id: str
    host_id: str
    tenant: str
    event: str
    reason: str
    at_s: float

    @property
    def subject(self) -> str:
        return subjects.vm_event(self.tenant, self.vm_id, self.event)


@dataclass(frozen=True)
class VmStateChanged:
    """The inventory's state of a VM changed; ``cause`` says who or what changed it."""

    vm_id: str
    tenant: str
    state: str
    host_id: str | None
    error: str | None
    cause: str

    @property
    def subject(self) -> str:
        return subjects.vm_event(self.tenant, self.vm_id, "state")


@dataclass(frozen=True)
class VmCreated:
    vm_id: str
    tenant: str
    name: str
    operation_id: str

    @property
    def subject(self) -> str:
        return subjects.vm_event(self.tenant, self.vm_id, "created")


@dataclass(frozen=True)
class VmMoved:
    """The VM changed hosts (a migration, a failover)."""

    vm_id: str
    tenant: str
    from_host_id: str
    host_id: str
    operation_id: str

    @property
    def subject(self) -> str:
        return subjects.vm_event(self.tenant, self.vm_id, "moved")


@dataclass(frozen=True)
class VmDeleted:
    vm_id: str
    tenant: str
    name: str
    reason: str  # "deleted", or why its provisioning failed

    @property
    def subject(self) -> str:
        return subjects.vm_event(self.tenant, self.vm_id, "deleted")


@dataclass(frozen=True)
class OperationStep:
    """An operation reached a step; ``outcome`` is progress, succeeded or failed."""

    operation_id: str
    tenant: str
    vm_id: str
    step: str
    error: str | None
    outcome: str = "progress"

    @property
    def subject(self) -> str:
        return subjects.op_event(self.tenant, self.operation_id, self.outcome)


@dataclass(frozen=True)
class UnmanagedDomain:
    """A domain runs (or is defined) on a host that no inventory row owns: reported, not adopted.
    ``defined_by_vmflow``: it carries vmflow's metadata (a VM deleted while its host was away)."""

    vm_id: str
    host_id: str
    state: str
    defined_by_vmflow: bool = False

    @property
    def subject(self) -> str:
        return subjects.host_event(self.host_id, "unmanaged_domain")


@dataclass(frozen=True)
class HostLiveness:
    """The liveness monitor's verdict on a host changed (up, worker_silent, failed, held)."""

    host_id: str
    liveness: str
    reason: str

    @property
    def subject(self) -> str:
        return subjects.host_event(self.host_id, self.liveness)


@dataclass(frozen=True)
class HostFenced:
    host_id: str
    action: str
    outcome: str  # "fenced", "failed" or "confirmed" (an operator said it is off)
    detail: str

    @property
    def subject(self) -> str:
        return subjects.host_event(self.host_id, f"fence_{self.outcome}")


@dataclass(frozen=True)
class AuditRecorded:
    """Someone changed something, or tried to: the audit record (``GET /v1/audit`` lists them).
    ``tenant`` None: an attempt without a valid token."""

    id: int
    at_s: float
    request_id: str
    token_id: str | None
    user: str | None
    tenant: str | None
    role: str | None
    method: str
    action: str  # the route: "POST /v1/vms/{vm_id}/stop"
    path: str
    status: int
    outcome: str  # accepted, done, refused, failed
    code: str | None
    operation_id: str | None
    token_tenant: str | None = None  # the token's own tenant (an admin's too)
    location: str | None = None  # what the change made
    detail: str | None = None

    @property
    def subject(self) -> str:
        return subjects.audit_event(self.tenant or subjects.NO_TENANT, self.outcome)


Event = (DomainLifecycle | VmStateChanged | VmCreated | VmMoved | VmDeleted | OperationStep | UnmanagedDomain
         | HostLiveness | HostFenced | AuditRecorded)


async def publish(publisher: Any, event: Event, event_id: str | None = None) -> None:
    """Publish one typed event through an ``EventPublisher``."""
    await publisher.publish(event.subject, codec.to_jsonable(event), event_id=event_id)


def lifecycle_from(raw: bytes) -> DomainLifecycle | None:
    """The lifecycle fact in a stored envelope, None for any other event."""
    envelope = json.loads(raw)
    if envelope.get("type") not in LIFECYCLE_TYPES or not str(envelope.get("source", "")).startswith("host-worker/"):
        return None
    return codec.decode(DomainLifecycle, json.dumps(envelope["data"]).encode())
