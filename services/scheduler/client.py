"""Talking to the scheduler service over NATS, and the activities that let workflows do so."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from temporalio import activity

from shared import subjects
from shared.messaging import request
from shared.models import (
    ClaimRelease,
    HostAdmin,
    HostList,
    HostQuery,
    HostRef,
    HostView,
    Placement,
    PlacementRequest,
)


class SchedulerClient:
    def __init__(self, nc: NatsClient, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s

    async def place(self, req: PlacementRequest) -> Placement:
        """Raises NoValidHost (with the rejection trail) or ServiceUnavailable."""
        return await request(self._nc, f"{subjects.SCHEDULER_PREFIX}.place", req, Placement, self._timeout_s)

    async def release(self, vm_id: str, host_id: str = "") -> bool:
        """Whether this call released the VM's claim (False: there was none, or no longer)."""
        answer = await request(self._nc, f"{subjects.SCHEDULER_PREFIX}.release", ClaimRelease(vm_id, host_id),
                               dict, self._timeout_s)
        return bool(answer.get("released"))

    async def hosts(self, offset: int = 0, limit: int = 500) -> HostList:
        """One page of hosts in id order; ``total`` says how many there are."""
        return await request(self._nc, f"{subjects.SCHEDULER_PREFIX}.hosts", HostQuery(offset, limit),
                             HostList, self._timeout_s)

    async def host(self, host_id: str) -> HostView:
        """With the host's allocations. Raises NotFound for an unknown host."""
        return await request(self._nc, f"{subjects.SCHEDULER_PREFIX}.host", HostRef(host_id), HostView,
                             self._timeout_s)

    async def set_host_admin(self, admin: HostAdmin) -> HostView:
        return await request(self._nc, f"{subjects.SCHEDULER_PREFIX}.set_host_admin", admin, HostView,
                             self._timeout_s)


class SchedulerActivities:
    """Run by the orchestrator worker: workflows place VMs through the scheduler service."""

    def __init__(self, client: SchedulerClient) -> None:
        self._client = client

    @activity.defn(name="scheduler.place")
    async def place(self, req: PlacementRequest) -> Placement:
        return await self._client.place(req)

    @activity.defn(name="scheduler.release")
    async def release(self, req: ClaimRelease) -> None:
        await self._client.release(req.vm_id, req.host_id)

    @activity.defn(name="scheduler.set_host_admin")
    async def set_host_admin(self, admin: HostAdmin) -> HostView:
        return await self._client.set_host_admin(admin)
