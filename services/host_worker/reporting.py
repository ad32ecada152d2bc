"""What a host tells the platform: heartbeats into the KV bucket, lifecycle events on NATS."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from services.host_worker.activities import HostActivities
from services.host_worker.hypervisor import Hypervisor, LifecycleEvent
from services.host_worker.peers import PeerProbe
from services.host_worker.settings import HostWorkerSettings
from shared import codec, events, subjects
from shared.errors import VmflowError
from shared.messaging import EventPublisher
from shared.models import DomainSummary, HostHeartbeat

log = structlog.get_logger(__name__)


def disk_capacity_gib(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize // 1024**3


@dataclass(frozen=True)
class HostLook:
    """What one look at the host's libvirt found; ``ok`` False when it failed or has not
    answered in time."""
    ok: bool
    vcpus: int = 0
    memory_mib: int = 0
    domains: tuple[DomainSummary, ...] = ()


class LibvirtLooker:
    """The heartbeat's look at libvirt, bounded in time: a call that does not answer within
    ``answer_timeout_s`` makes the beat say libvirt is not ok (the worker itself is alive), and
    no second look starts while the first still hangs, so a stuck libvirtd never takes every
    thread of the pool."""

    def __init__(self, hv: Hypervisor, answer_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._hv = hv
        self._answer_timeout_s = answer_timeout_s
        self._clock = clock
        self._pending: asyncio.Future | None = None
        self._pending_since_s = 0.0

    def _look(self) -> HostLook:
        vcpus, memory_mib = self._hv.host_capacity()
        return HostLook(True, vcpus, memory_mib, tuple(self._hv.list_domains()))

    async def look(self) -> HostLook:
        if self._pending is None:
            self._pending = asyncio.ensure_future(asyncio.to_thread(self._look))
            self._pending_since_s = self._clock()
        # The bound runs from the look's start: once it is past, every beat goes out at once.
        left_s = max(0.0, self._answer_timeout_s - (self._clock() - self._pending_since_s))
        done, _ = await asyncio.wait({self._pending}, timeout=left_s)
        if not done:
            log.warning("libvirt does not answer", waited_s=round(self._clock() - self._pending_since_s, 1))
            return HostLook(False)
        pending, self._pending = self._pending, None
        try:
            return pending.result()
        except Exception as exc:  # whatever it was, the next beat looks again
            log.warning("libvirt unreachable", error=exc.message if isinstance(exc, VmflowError) else repr(exc))
            return HostLook(False)


async def heartbeat_loop(
    settings: HostWorkerSettings, hv: Hypervisor, nc, kv, publisher: EventPublisher, domain_type: str,
    peers: PeerProbe,
) -> None:
    """Publish the host's capacity, domains and the peers it reaches every few seconds. libvirt
    being unreachable, or not answering within ``libvirt_answer_timeout_s``, is itself reported
    (libvirt_ok=False), and each change of reachability becomes an event. NATS being away skips
    beats; it never ends the loop.

    Each beat goes out twice: as a plain message (``vmflow.hb.<host>``), which any NATS node
    carries at once, and into the heartbeat bucket, which a JetStream leader election can hold
    up for seconds. The scheduler's liveness follows whichever arrives first."""
    last_ok: bool | None = None
    vcpus, memory_mib = 0, 0
    started_at_s = time.time()
    looker = LibvirtLooker(hv, settings.libvirt_answer_timeout_s)
    for seq in itertools.count(1):
        look = await looker.look()
        ok, domains = look.ok, look.domains
        if ok:
            vcpus, memory_mib = look.vcpus, look.memory_mib
        beat = HostHeartbeat(
            host_id=settings.host_id,
            sent_at_s=time.time(),
            libvirt_ok=ok,
            domain_type=domain_type,
            vcpus=vcpus,
            memory_mib=max(0, memory_mib - settings.reserved_memory_mib),
            domains=domains,
            disk_gib=disk_capacity_gib(settings.local_disk_dir),
            labels=tuple(settings.labels),
            cluster=settings.cluster,
            migration_uri=settings.migration_uri,
            peers_reached=peers.reached(),
            peers_watched=peers.watched(),
            worker_started_at_s=started_at_s,
            seq=seq,
        )
        try:
            data = codec.encode(beat)
            await nc.publish(subjects.heartbeat(settings.host_id), data)
            await asyncio.wait_for(kv.put(settings.host_id, data), settings.heartbeat_interval_s)
            if ok != last_ok:
                kind = "up" if ok else "libvirt_unreachable"
                await publisher.publish(subjects.host_event(settings.host_id, kind), codec.to_jsonable(beat))
                last_ok = ok
        except Exception as exc:
            log.warning("heartbeat not published", error=str(exc) or type(exc).__name__)
        await asyncio.sleep(settings.heartbeat_interval_s)


async def forward_lifecycle(
    settings: HostWorkerSettings,
    hv: Hypervisor,
    host: HostActivities,
    queue: asyncio.Queue[LifecycleEvent],
    publisher: EventPublisher,
) -> None:
    """Publish each libvirt lifecycle event as ``vmflow.evt.vm.<tenant>.<vm>.<event>``."""
    while True:
        event = await queue.get()
        tenant = host.tenants.get(event.vm_id)
        if tenant is None:
            tenant = await asyncio.to_thread(hv.tenant_of, event.vm_id) or "unknown"
            host.tenants[event.vm_id] = tenant
        fact = events.DomainLifecycle(event.vm_id, settings.host_id, tenant, event.event, event.reason, event.at_s)
        try:
            await events.publish(publisher, fact)
        except Exception as exc:  # NATS down: the heartbeat still carries the truth
            log.warning("lifecycle event not published", error=str(exc), vm_id=event.vm_id)
