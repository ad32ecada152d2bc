"""The placement state of one scheduler replica: the hosts as their heartbeats, operators and
the shared claims describe them, and the decisions made from them. Pure apart from the
injected clock; the NATS service around it is ``service``, the claims' store ``claim_store``.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

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
from shared.errors import HostsSilent, NotFound, NoValidHost
from shared.models import (
    HostAdmin,
    HostHeartbeat,
    HostList,
    HostMode,
    HostQuery,
    HostView,
    Placement,
    PlacementRequest,
)

log = structlog.get_logger(__name__)


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
