"""The scheduler as a NATS service: learns hosts from the heartbeat bucket and operators'
decisions from the host-admin bucket, answers ``place``, ``release``, ``hosts`` and ``host``.

Placement runs synchronously inside one event-loop turn, so two concurrent requests can never
both take the last free slot of a host: the first one's claim is in the book before the second
one is weighed.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from services.scheduler.claims import ClaimBook
from services.scheduler.host_state import HostState, host_state, with_liveness
from services.scheduler.liveness import Liveness, Verdict
from services.scheduler.placement import choose_host
from services.scheduler.settings import SchedulerSettings
from shared import codec, metrics, subjects
from shared.errors import HostsSilent, NotFound, NoValidHost, VmflowError
from shared.messaging import endpoint, heartbeat_bucket, key_value_bucket
from shared.models import (
    ClaimRelease,
    HostAdmin,
    HostHeartbeat,
    HostList,
    HostMode,
    HostQuery,
    HostRef,
    HostView,
    Placement,
    PlacementRequest,
)

log = structlog.get_logger(__name__)


class Scheduler:
    """Placement state of one scheduler replica. Pure apart from the injected clock.

    Host states are kept between decisions and rebuilt one host at a time, when that host's
    heartbeat, claims or admin state change; a decision then only judges liveness and filters.
    """

    def __init__(self, settings: SchedulerSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._policy = settings.placement_policy()
        self._claims = ClaimBook(settings.claim_ttl_s)
        self.heartbeats: dict[str, HostHeartbeat] = {}
        self.admin: dict[str, HostAdmin] = {}
        self.liveness: dict[str, Verdict] = {}  # the monitor's latest verdicts
        self._states: dict[str, HostState] = {}
        self._order: list[str] = []  # host ids, sorted

    def _refresh(self, host_id: str) -> None:
        beat = self.heartbeats.get(host_id)
        if beat is None:
            return
        if host_id not in self._states:
            bisect.insort(self._order, host_id)
        self._states[host_id] = host_state(
            beat, self._claims.on_host(host_id), self.admin.get(host_id), self._clock(),
            self.settings.heartbeat_timeout_s,
        )

    def _judged(self, host_id: str, now_s: float) -> HostState:
        return with_liveness(self._states[host_id], self.heartbeats[host_id], now_s,
                             self.settings.heartbeat_timeout_s)

    def host_states(self) -> list[HostState]:
        now_s = self._clock()
        for host_id in self._claims.expire(now_s):
            self._refresh(host_id)
        return [self._judged(host_id, now_s) for host_id in self._order]

    def place(self, req: PlacementRequest) -> Placement:
        """Idempotent per VM: a VM that already holds a claim gets the same host back.
        Raises NoValidHost with the rejection trail."""
        existing = self._claims.get(req.vm_id)
        if existing is not None and existing.expires_at_s > self._clock() and _allowed(existing.host_id, req):
            return self._placement(req.vm_id, existing.host_id)
        decision = choose_host(self.host_states(), req, self._policy)
        if decision.host is None:
            log.info("no valid host", vm_id=req.vm_id, trail=decision.explain())
            if any(r.filter_name == "host_up" and self._may_return(r.host_id) for r in decision.rejections):
                raise HostsSilent(f"no valid host while some hosts are silent for a moment: {decision.explain()}")
            raise NoValidHost(
                f"no valid host for {req.vcpus} vCPU / {req.memory_mib} MiB"
                f"{f' / {req.disk_gib} GiB of local disk' if req.disk_gib else ''}: "
                f"{decision.explain()}"
            )
        host = decision.host
        self._claims.claim(req.vm_id, host.host_id, req.vcpus, req.memory_mib, req.disk_gib,
                           self._clock(), req.group.group_id if req.group else None)
        self._refresh(host.host_id)
        if existing is not None and existing.host_id != host.host_id:
            self._refresh(existing.host_id)  # the VM's earlier claim there is gone
        log.info("placed", vm_id=req.vm_id, host_id=host.host_id, candidates=decision.candidates,
                 rejected=len(decision.rejections))
        return self._placement(req.vm_id, host.host_id)

    def _may_return(self, host_id: str) -> bool:
        """Whether a host that is down now may be back in a moment (a blip, not a failure)."""
        verdict = self.liveness.get(host_id)
        admin = self.admin.get(host_id)
        fenced = admin is not None and admin.mode in (HostMode.FENCING, HostMode.FENCED, HostMode.FENCE_FAILED)
        return not fenced and (verdict is None or verdict.liveness is not Liveness.FAILED)

    def set_liveness(self, verdict: Verdict) -> None:
        self.liveness[verdict.host_id] = verdict

    def _placement(self, vm_id: str, host_id: str) -> Placement:
        beat = self.heartbeats[host_id]
        return Placement(vm_id, host_id, beat.domain_type, beat.migration_uri)

    def observe(self, beat: HostHeartbeat) -> None:
        self.heartbeats[beat.host_id] = beat
        self._claims.settle(beat.host_id, {d.vm_id for d in beat.domains})
        self._refresh(beat.host_id)

    def set_admin(self, admin: HostAdmin) -> None:
        self.admin[admin.host_id] = admin
        self._refresh(admin.host_id)

    def release(self, req: ClaimRelease) -> None:
        claim = self._claims.release(req.vm_id)
        if claim is not None:
            self._refresh(claim.host_id)

    def host_views(self, query: HostQuery = HostQuery()) -> HostList:
        """One page of hosts, in host id order, without allocations."""
        now_s = self._clock()
        page = self._order[query.offset: query.offset + query.limit]
        views = tuple(self._view(self._judged(h, now_s), with_allocations=False) for h in page)
        return HostList(views, total=len(self._order))

    def host_view(self, host_id: str) -> HostView:
        """One host with its allocations. Raises NotFound."""
        if host_id not in self._states:
            raise NotFound(f"no host '{host_id}'")
        return self._view(self._judged(host_id, self._clock()), with_allocations=True)

    def _view(self, state: HostState, with_allocations: bool) -> HostView:
        admin = self.admin.get(state.host_id)
        verdict = self.liveness.get(state.host_id)
        reason = verdict.reason if verdict is not None and verdict.liveness is not Liveness.UP else ""
        if admin is not None and admin.mode in (HostMode.FENCING, HostMode.FENCED, HostMode.FENCE_FAILED):
            status, reason = admin.mode.value, admin.reason
        elif not state.up:
            status = "failed" if verdict is not None and verdict.liveness is Liveness.FAILED else "down"
            if verdict is not None and verdict.liveness is Liveness.WORKER_SILENT:
                status = Liveness.WORKER_SILENT.value
        elif state.enabled:
            status = "up"
        else:
            status = (admin.mode if admin and admin.mode else HostMode.DISABLED).value
        return HostView(
            host_id=state.host_id,
            state=status,
            domain_type=state.domain_type,
            vcpus_total=state.vcpus_total,
            memory_mib_total=state.memory_mib_total,
            disk_gib_total=state.disk_gib_total,
            vcpus_used=state.vcpus_used,
            memory_mib_used=state.memory_mib_used,
            disk_gib_used=state.disk_gib_used,
            domain_count=state.domain_count,
            last_heartbeat_at_s=self.heartbeats[state.host_id].sent_at_s,
            last_heartbeat_age_s=max(0.0, self._clock() - self.heartbeats[state.host_id].sent_at_s),
            labels=tuple(sorted(state.labels)),
            cluster=state.cluster,
            disabled_reason=state.disabled_reason,
            state_reason=reason,
            operation_id=admin.operation_id if admin else "",
            liveness=verdict.liveness.value if verdict is not None else "unknown",
            allocations=state.allocations if with_allocations else (),
        )


def _allowed(host_id: str, req: PlacementRequest) -> bool:
    """Whether an earlier claim still answers this request (a later move of the same VM may
    exclude the host it was claimed on)."""
    return host_id not in req.exclude_hosts and req.only_host in (None, host_id)


def timed_place(scheduler: Scheduler, req: PlacementRequest) -> Placement:
    """``scheduler.place``, its decision time observed in ``vmflow_placement_duration_seconds``
    under the outcome: placed, or the error's code (no_valid_host, hosts_silent, ...)."""
    started_s = time.perf_counter()
    outcome = "placed"
    try:
        return scheduler.place(req)
    except VmflowError as exc:
        outcome = exc.code
        raise
    except Exception:
        outcome = "internal"
        raise
    finally:
        metrics.PLACEMENT_DURATION.labels(outcome).observe(time.perf_counter() - started_s)


async def follow_bucket(nc: NatsClient, bucket: str, cls: type, apply: Callable) -> None:
    """Apply the latest value of every key of ``bucket`` (decoded as ``cls``), forever."""
    kv = await key_value_bucket(nc.jetstream(), bucket)
    watcher = await kv.watchall()
    async for entry in watcher:
        if entry is None or entry.value is None:
            continue  # end-of-initial-values marker, or a deleted key
        try:
            apply(codec.decode(cls, entry.value))
        except ValueError:
            log.warning("ignoring malformed entry", bucket=bucket, key=entry.key)


async def follow_heartbeats(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler) -> None:
    await heartbeat_bucket(nc.jetstream(), settings.heartbeat_bucket)
    await follow_bucket(nc, settings.heartbeat_bucket, HostHeartbeat, scheduler.observe)


async def follow_host_admin(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler) -> None:
    await follow_bucket(nc, settings.host_admin_bucket, HostAdmin, scheduler.set_admin)


async def start_service(nc: NatsClient, scheduler: Scheduler) -> Service:
    admin_kv = await key_value_bucket(nc.jetstream(), scheduler.settings.host_admin_bucket)

    async def place(req: PlacementRequest) -> Placement:
        return timed_place(scheduler, req)

    async def release(req: ClaimRelease) -> dict[str, bool]:
        scheduler.release(req)
        return {"released": True}

    async def hosts(query: HostQuery) -> HostList:
        return scheduler.host_views(query)

    async def host(ref: HostRef) -> HostView:
        return scheduler.host_view(ref.host_id)

    async def set_host_admin(admin: HostAdmin) -> HostView:
        """Enable or disable a host. Stored in a KV bucket so every replica (and a restarted
        one) sees it; applied here at once so the answer already shows it."""
        scheduler.host_view(admin.host_id)  # NotFound for unknown hosts
        await admin_kv.put(admin.host_id, codec.encode(admin))
        scheduler.set_admin(admin)
        return scheduler.host_view(admin.host_id)

    service = await add_service(
        nc,
        ServiceConfig(name=subjects.SCHEDULER_SERVICE, version="0.1.0",
                      description="vmflow placement", queue_group="vmflow-scheduler"),
    )
    group = service.add_group(name=subjects.SCHEDULER_PREFIX)
    for name, request_type, handler in (
        ("place", PlacementRequest, place),
        ("release", ClaimRelease, release),
        ("hosts", HostQuery, hosts),
        ("host", HostRef, host),
        ("set_host_admin", HostAdmin, set_host_admin),
    ):
        await group.add_endpoint(EndpointConfig(name=name, handler=endpoint(request_type, handler)))
    return service
