"""The scheduler as a NATS service: learns hosts from the heartbeat bucket, operators'
decisions from the host-admin bucket and every replica's claims from the claims bucket, and
answers ``place``, ``release``, ``hosts`` and ``host``.

Any number of replicas answer in one queue group. A decision is made from the replica's mirror
and committed by compare-and-set on the chosen host's claims (``claim_store``), so two replicas,
or two requests in one, never both take the last free slot of a host.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from services.scheduler.claim_store import KvClaimStore, Placer, decoded_claims
from services.scheduler.claims import ClaimBook, ClaimWrite, HostClaims, kept
from services.scheduler.host_state import (
    Claim,
    HostState,
    JudgedHosts,
    host_state,
    index_groups,
    with_liveness,
)
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

REVISION_HEADER = "Vmflow-Revision"
ADMIN_RESYNC_S = 10.0  # the host-admin bucket is read anew this often
CLAIMS_RESYNC_S = 30.0  # and the claims bucket (a stale mirror costs lost races, never a double booking)


@dataclass(frozen=True)
class Proposal:
    """A placement decided from this replica's mirror, valid once ``write`` commits (None: the
    VM's claim there stands already)."""

    placement: Placement
    write: ClaimWrite | None


class Scheduler:
    """Placement state of one scheduler replica. Pure apart from the injected clock.

    Host states are kept between decisions and rebuilt one host at a time, when that host's
    heartbeat, claims or admin state change; a decision then only judges liveness and filters.
    """

    def __init__(self, settings: SchedulerSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._policy = settings.placement_policy()
        self._claims = ClaimBook()
        self.heartbeats: dict[str, HostHeartbeat] = {}
        self.admin: dict[str, HostAdmin] = {}
        self._admin_revisions: dict[str, int] = {}
        self.liveness: dict[str, Verdict] = {}  # the monitor's latest verdicts
        self._states: dict[str, HostState] = {}
        self._order: list[str] = []  # host ids, sorted
        self._groups: dict[str, set[str]] = {}  # group id -> hosts running its members
        self._reported_since: dict[str, dict[str, float]] = {}  # host id -> VM id -> first beat naming it

    def _refresh(self, host_id: str) -> None:
        beat = self.heartbeats.get(host_id)
        if beat is None:
            return
        old = self._states.get(host_id)
        if old is None:
            bisect.insort(self._order, host_id)
        self._states[host_id] = host_state(
            beat, self._claims.on_host(host_id), self.admin.get(host_id), self._clock(),
            self.settings.heartbeat_timeout_s,
        )
        index_groups(self._groups, old, self._states[host_id])

    def _judged(self, host_id: str, now_s: float) -> HostState:
        return with_liveness(self._states[host_id], self.heartbeats[host_id], now_s,
                             self.settings.heartbeat_timeout_s)

    def host_states(self) -> JudgedHosts:
        """The fleet as the next decision reads it: each host judged alive or not when read, so a
        decision that examines a sample of the hosts judges only those."""
        now_s = self._clock()
        for host_id in self._claims.expire(now_s):
            self._refresh(host_id)
        return JudgedHosts(self._order, self._states, self.heartbeats, self._groups, now_s,
                           self.settings.heartbeat_timeout_s)

    def propose(self, req: PlacementRequest) -> Proposal:
        """The host for this request and the claim write that takes it. Idempotent per VM: a VM
        that already holds a claim gets the same host back. Raises NoValidHost with the
        rejection trail."""
        now_s = self._clock()
        existing = self._claims.get(req.vm_id)
        if existing is not None and existing.expires_at_s > now_s and _allowed(existing.host_id, req):
            return Proposal(self._placement(req.vm_id, existing.host_id), None)
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
        claim = Claim(req.vm_id, host.host_id, req.vcpus, req.memory_mib, req.disk_gib,
                      now_s + self.settings.claim_ttl_s, req.group.group_id if req.group else None)
        log.info("placed", vm_id=req.vm_id, host_id=host.host_id, candidates=decision.candidates,
                 rejected=len(decision.rejections))
        return Proposal(self._placement(req.vm_id, host.host_id), self._write(host.host_id, claim.vm_id, claim))

    def _write(self, host_id: str, drop_vm_id: str = "", add: Claim | None = None) -> ClaimWrite:
        """The host's claims after dropping ``drop_vm_id`` (and what no longer counts) and
        adding ``add``, against the revision this replica holds."""
        entry = self._claims.entry(host_id)
        now_s = self._clock()
        claims = kept(entry.claims, now_s, self._settled(host_id, now_s), drop_vm_id)
        return ClaimWrite(host_id, (*claims, add) if add else claims, entry.revision)

    def _settled(self, host_id: str, now_s: float) -> set[str]:
        """The VMs the host first reported ``claim_settle_after_s`` ago or more (whether it still
        does or they have left since): their claims may go."""
        since = self._reported_since.get(host_id, {})
        return {vm_id for vm_id, seen_s in since.items() if now_s - seen_s >= self.settings.claim_settle_after_s}

    def release_write(self, vm_id: str, host_id: str, made_before_s: float = math.inf) -> ClaimWrite | None:
        """The write that releases the VM's claim on the host; None when there is none (or only
        one made after ``made_before_s``, by its expiry)."""
        if not any(c.vm_id == vm_id and c.expires_at_s <= made_before_s for c in self._claims.on_host(host_id)):
            return None
        return self._write(host_id, vm_id)

    def settle_write(self, host_id: str) -> ClaimWrite | None:
        """The write that drops the host's claims of VMs it reports, and expired ones; None
        when every claim there still counts."""
        write = self._write(host_id)
        return write if len(write.claims) < len(self._claims.on_host(host_id)) else None

    def claim_hosts(self, vm_id: str) -> set[str]:
        return self._claims.hosts_of(vm_id)

    def apply_claims(self, entry: HostClaims) -> None:
        """A host's claims as the store holds them (a write of this replica or another's)."""
        if self._claims.apply(entry):
            self._refresh(entry.host_id)

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

    def observe(self, beat: HostHeartbeat) -> bool:
        """Take a heartbeat (one older than the host's latest is ignored: beats come by two
        paths). Returns whether the host has reported VMs it has claims for long enough that
        the store should forget those claims (``settle_write``)."""
        known = self.heartbeats.get(beat.host_id)
        if known is not None and not beat.supersedes(known):
            return False
        self.heartbeats[beat.host_id] = beat
        self._refresh(beat.host_id)
        now_s = self._clock()
        seen = self._reported_since.get(beat.host_id, {})
        reported = {d.vm_id: seen.get(d.vm_id, now_s) for d in beat.domains}
        # A VM that has left since (moved straight back) still lets its claim go: once reported,
        # the claim has done its work, and kept on it would count the VM there for its whole TTL.
        claimed = {c.vm_id for c in self._claims.on_host(beat.host_id)}
        reported.update((vm_id, seen_s) for vm_id, seen_s in seen.items() if vm_id in claimed and vm_id not in reported)
        self._reported_since[beat.host_id] = reported
        settled = self._settled(beat.host_id, now_s)
        return any(c.vm_id in settled for c in self._claims.on_host(beat.host_id))

    def set_admin(self, admin: HostAdmin, revision: int = 0) -> None:
        """An operator's decision on a host, as the host-admin bucket's ``revision`` of it (it
        comes by the bucket and by a plain message: an older one than what is held is ignored)."""
        if revision and revision <= self._admin_revisions.get(admin.host_id, 0):
            return
        if revision:
            self._admin_revisions[admin.host_id] = revision
        self.admin[admin.host_id] = admin
        self._refresh(admin.host_id)

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
        if state.up and verdict is not None and verdict.liveness is not Liveness.UP:
            # Its own heartbeat vouches for it: the monitor says so at its next look; every
            # replica says so from now on, not each at its own next look.
            verdict = Verdict(state.host_id, Liveness.UP, "heartbeating")
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


async def timed_place(placer: Placer, req: PlacementRequest) -> Placement:
    """``placer.place``, its time observed in ``vmflow_placement_duration_seconds`` under the
    outcome: placed, or the error's code (no_valid_host, hosts_silent, ...)."""
    started_s = time.perf_counter()
    outcome = "placed"
    try:
        return await placer.place(req)
    except VmflowError as exc:
        outcome = exc.code
        raise
    except Exception:
        outcome = "internal"
        raise
    finally:
        metrics.PLACEMENT_DURATION.labels(outcome).observe(time.perf_counter() - started_s)


async def follow_bucket(nc: NatsClient, bucket: str, apply: Callable, decode: Callable,
                        ready: asyncio.Event | None = None, replicas: int = 1,
                        resync_s: float | None = None) -> None:
    """Apply the latest value of every key of ``bucket`` (``decode(entry)``), forever; set
    ``ready`` once the values there at the start are applied. A watch that fails or ends (its
    stream without a leader for a moment) is opened again, and with ``resync_s`` every so often
    anyway (a watch can also fall silent after a NATS restart): every value comes again, and the
    mirrors keep the newest (by revision, or by heartbeat time)."""
    backoff_s = 0.5
    while True:
        try:
            kv = await key_value_bucket(nc.jetstream(), bucket, replicas=replicas)
            watcher = await kv.watchall()
            async for entry in _until(watcher, resync_s):
                backoff_s = 0.5
                if entry is None:  # the end of the values there at the start
                    if ready is not None:
                        ready.set()
                    continue
                if entry.value is None:
                    continue  # a deleted key
                try:
                    apply(decode(entry))
                except ValueError:
                    log.warning("ignoring malformed entry", bucket=bucket, key=entry.key)
            if resync_s is not None:
                continue  # time to read it all anew
            log.warning("bucket watch ended; watching again", bucket=bucket)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("bucket watch failed; watching again", bucket=bucket, error=str(exc) or type(exc).__name__)
        await asyncio.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, 5.0)


async def _until(watcher, resync_s: float | None):
    """The watcher's entries, for ``resync_s`` at most (None: as long as it gives them)."""
    if resync_s is None:
        async for entry in watcher:
            yield entry
        return
    give_up_s = time.monotonic() + resync_s
    try:
        while (left_s := give_up_s - time.monotonic()) > 0:
            try:
                yield await watcher.updates(timeout=left_s)
            except NatsTimeoutError:
                return
    finally:
        await watcher.stop()


def decoder(cls: type) -> Callable:
    return lambda entry: codec.decode(cls, entry.value)


class Buckets:
    """What a replica mirrors before it answers: until all three are read, it would place
    blind (no hosts known) or double-book (claims unknown)."""

    def __init__(self) -> None:
        self.heartbeats, self.admin, self.claims = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def wait(self) -> None:
        await asyncio.gather(self.heartbeats.wait(), self.admin.wait(), self.claims.wait())


async def follow_heartbeats(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler,
                            placer: Placer, ready: asyncio.Event | None = None) -> None:
    """Each heartbeat into the scheduler; the claims of VMs a host now reports leave the store."""
    await heartbeat_bucket(nc.jetstream(), settings.heartbeat_bucket, settings.jetstream_replicas)
    settling: set[str] = set()
    tasks: set[asyncio.Task] = set()  # referenced until done

    async def settle(host_id: str) -> None:
        try:
            await placer.settle(host_id)
        except Exception as exc:  # the next heartbeat tries again
            log.warning("claims not settled", host_id=host_id, error=str(exc) or type(exc).__name__)
        finally:
            settling.discard(host_id)

    def observe(beat: HostHeartbeat) -> None:
        if scheduler.observe(beat) and beat.host_id not in settling:
            settling.add(beat.host_id)
            task = asyncio.get_running_loop().create_task(settle(beat.host_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def on_message(msg) -> None:
        try:
            observe(codec.decode(HostHeartbeat, msg.data))
        except ValueError:
            log.warning("ignoring malformed heartbeat", subject=msg.subject)

    subscription = await nc.subscribe(f"{subjects.HEARTBEATS}.*", cb=on_message)
    try:
        await follow_bucket(nc, settings.heartbeat_bucket, observe, decoder(HostHeartbeat), ready)  # made above
    finally:
        await subscription.unsubscribe()


async def follow_host_admin(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler,
                            ready: asyncio.Event | None = None) -> None:
    """Hosts' modes from the bucket (at start, and re-read every ``ADMIN_RESYNC_S``) and, at
    once, from the plain message the replica that changed one sends."""
    async def on_message(msg) -> None:
        try:
            scheduler.set_admin(codec.decode(HostAdmin, msg.data), int((msg.headers or {}).get(REVISION_HEADER, 0)))
        except ValueError:
            log.warning("ignoring malformed host mode", subject=msg.subject)

    subscription = await nc.subscribe(subjects.HOST_ADMIN_CHANGES, cb=on_message)
    try:
        await follow_bucket(nc, settings.host_admin_bucket, lambda pair: scheduler.set_admin(*pair),
                            lambda e: (codec.decode(HostAdmin, e.value), e.revision), ready,
                            settings.jetstream_replicas, resync_s=ADMIN_RESYNC_S)
    finally:
        await subscription.unsubscribe()


async def follow_claims(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler,
                        ready: asyncio.Event | None = None) -> None:
    await follow_bucket(nc, settings.claims_bucket, scheduler.apply_claims,
                        lambda e: decoded_claims(e.key, e.value, e.revision), ready, settings.jetstream_replicas,
                        resync_s=CLAIMS_RESYNC_S)


async def claim_placer(nc: NatsClient, scheduler: Scheduler) -> Placer:
    kv = await key_value_bucket(nc.jetstream(), scheduler.settings.claims_bucket,
                                replicas=scheduler.settings.jetstream_replicas)
    return Placer(scheduler, KvClaimStore(kv))


async def start_service(nc: NatsClient, scheduler: Scheduler, placer: Placer) -> Service:
    admin_kv = await key_value_bucket(nc.jetstream(), scheduler.settings.host_admin_bucket,
                                      replicas=scheduler.settings.jetstream_replicas)

    async def place(req: PlacementRequest) -> Placement:
        return await timed_place(placer, req)

    async def release(req: ClaimRelease) -> dict[str, bool]:
        return {"released": await placer.release(req.vm_id, req.host_id)}

    async def hosts(query: HostQuery) -> HostList:
        return scheduler.host_views(query)

    async def host(ref: HostRef) -> HostView:
        return scheduler.host_view(ref.host_id)

    async def set_host_admin(admin: HostAdmin) -> HostView:
        """Enable or disable a host. Stored in a KV bucket so every replica (and a restarted
        one) sees it; applied here at once so the answer already shows it."""
        scheduler.host_view(admin.host_id)  # NotFound for unknown hosts
        revision = await admin_kv.put(admin.host_id, codec.encode(admin))
        scheduler.set_admin(admin, revision)
        await nc.publish(subjects.HOST_ADMIN_CHANGES, codec.encode(admin), headers={REVISION_HEADER: str(revision)})
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
        # Placements and releases wait on the claims bucket: each in a task of its own.
        concurrent = name in ("place", "release")
        await group.add_endpoint(EndpointConfig(name=name, handler=endpoint(request_type, handler, concurrent)))
    return service
