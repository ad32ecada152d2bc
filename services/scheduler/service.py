"""The scheduler as a NATS service: learns hosts from the heartbeat bucket, answers ``place``.

Placement runs synchronously inside one event-loop turn, so two concurrent requests can never
both take the last free slot of a host: the first one's claim is in the book before the second
one is weighed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from services.scheduler.claims import ClaimBook
from services.scheduler.host_state import HostState, build_host_states
from services.scheduler.placement import PlacementPolicy, choose_host
from services.scheduler.settings import SchedulerSettings
from shared import codec, subjects
from shared.errors import NoValidHost
from shared.messaging import endpoint, heartbeat_bucket
from shared.models import (
    ClaimRelease,
    HostHeartbeat,
    HostList,
    HostView,
    Placement,
    PlacementRequest,
)

log = structlog.get_logger(__name__)


class Scheduler:
    """Placement state of one scheduler replica. Pure apart from the injected clock."""

    def __init__(self, settings: SchedulerSettings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._policy = PlacementPolicy(
            cpu_allocation_ratio=settings.cpu_allocation_ratio,
            ram_allocation_ratio=settings.ram_allocation_ratio,
            weigh=settings.weigh_policy,
        )
        self._claims = ClaimBook(settings.claim_ttl_s)
        self.heartbeats: dict[str, HostHeartbeat] = {}

    def host_states(self) -> list[HostState]:
        now_s = self._clock()
        return build_host_states(
            self.heartbeats, self._claims.live(now_s), now_s, self._settings.heartbeat_timeout_s
        )

    def place(self, req: PlacementRequest) -> Placement:
        """Idempotent per VM: a VM that already holds a claim gets the same host back."""
        existing = self._claims.get(req.vm_id)
        if existing is not None and existing.expires_at_s > self._clock():
            beat = self.heartbeats[existing.host_id]
            return Placement(req.vm_id, existing.host_id, beat.domain_type)
        decision = choose_host(self.host_states(), req, self._policy)
        if decision.host is None:
            log.info("no valid host", vm_id=req.vm_id, trail=decision.explain())
            raise NoValidHost(
                f"no valid host for {req.vcpus} vCPU / {req.memory_mib} MiB: {decision.explain()}"
            )
        host = decision.host
        self._claims.claim(
            req.vm_id, host.host_id, req.vcpus, req.memory_mib, req.disk_gib, self._clock()
        )
        log.info("placed", vm_id=req.vm_id, host_id=host.host_id, candidates=decision.candidates,
                 filtered=len(decision.rejections))
        return Placement(req.vm_id, host.host_id, host.domain_type)

    def observe(self, beat: HostHeartbeat) -> None:
        self.heartbeats[beat.host_id] = beat
        self._claims.settle(beat.host_id, {d.vm_id for d in beat.domains})

    def release(self, req: ClaimRelease) -> None:
        self._claims.release(req.vm_id)

    def host_views(self) -> HostList:
        views = []
        for state in self.host_states():
            beat = self.heartbeats[state.host_id]
            status = "down" if not state.up else ("disabled" if not state.enabled else "up")
            views.append(
                HostView(
                    host_id=state.host_id,
                    state=status,
                    domain_type=state.domain_type,
                    vcpus_total=state.vcpus_total,
                    memory_mib_total=state.memory_mib_total,
                    vcpus_used=state.vcpus_used,
                    memory_mib_used=state.memory_mib_used,
                    domain_count=state.domain_count,
                    last_heartbeat_at_s=beat.sent_at_s,
                    last_heartbeat_age_s=state.last_heartbeat_age_s,
                )
            )
        return HostList(tuple(views))


async def follow_heartbeats(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler) -> None:
    """Keep ``scheduler.heartbeats`` equal to the latest value of every key in the bucket."""
    kv = await heartbeat_bucket(nc.jetstream(), settings.heartbeat_bucket)
    watcher = await kv.watchall()
    async for entry in watcher:
        if entry is None or entry.value is None:
            continue  # end-of-initial-values marker, or a deleted key
        try:
            scheduler.observe(codec.decode(HostHeartbeat, entry.value))
        except ValueError:
            log.warning("ignoring malformed heartbeat", key=entry.key)


async def start_service(nc: NatsClient, scheduler: Scheduler) -> Service:
    async def place(req: PlacementRequest) -> Placement:
        return scheduler.place(req)

    async def release(req: ClaimRelease) -> dict[str, bool]:
        scheduler.release(req)
        return {"released": True}

    async def hosts(_: None) -> HostList:
        return scheduler.host_views()

    service = await add_service(
        nc,
        ServiceConfig(
            name=subjects.SCHEDULER_SERVICE,
            version="0.1.0",
            description="vmflow placement",
            queue_group="vmflow-scheduler",
        ),
    )
    group = service.add_group(name=subjects.SCHEDULER_PREFIX)
    await group.add_endpoint(EndpointConfig(name="place", handler=endpoint(PlacementRequest, place)))
    await group.add_endpoint(EndpointConfig(name="release", handler=endpoint(ClaimRelease, release)))
    await group.add_endpoint(EndpointConfig(name="hosts", handler=endpoint(type(None), hosts)))
    return service


async def wait_for_heartbeats(scheduler: Scheduler, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not scheduler.heartbeats and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
