"""The inventory follows what libvirt says, for every VM no operation holds.

Two feeds, one policy (``services.api.drift``): libvirt's lifecycle events, from a durable
JetStream consumer (nothing is missed across API restarts, replicas share the work), for speed;
and each host's heartbeat, which lists every domain with its state, for completeness (a host
whose worker restarted, a host rebuilt, an event lost). Writes are compare-and-set against the
row as read, so a workflow that took the VM meanwhile always wins.

Reactions: a crashed guest restarts in place per its crash policy; a VM whose domain its host
lost is defined and started again there; a copy of a VM on a host it no longer lives on (a host
back from being fenced) is removed; a domain no row owns is reported, never adopted nor touched.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC

import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from temporalio.client import Client as TemporalClient
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from services.api.db import Inventory
from services.api.drift import Drift, Observed, Recorded, drift, observed_from_lifecycle
from services.api.models import Vm, vm_summary
from shared import codec, events, subjects
from shared.failover import CrashPolicy, RestartInput, StaleCopy, restarts_again
from shared.messaging import EventPublisher, heartbeat_bucket
from shared.models import GroupRule, HostHeartbeat, VmState
from shared.names import ORCHESTRATOR_QUEUE, restart_workflow_id, stale_copy_workflow_id
from shared.operation_tags import operation_summary, tagged, vm_label

log = structlog.get_logger(__name__)

LIFECYCLE_CONSUMER = "vmflow-api-reality"
_EVICT_RETRY_S = 30.0
_UNMANAGED_AFTER_S = 5.0  # seen that long without a row: not a delete still settling


def recorded(vm: Vm | None) -> Recorded | None:
    if vm is None:
        return None
    updated = vm.updated_at if vm.updated_at.tzinfo else vm.updated_at.replace(tzinfo=UTC)
    return Recorded(vm.id, vm.state, vm.host_id, updated.timestamp())


class RealityFollower:
    def __init__(self, inventory: Inventory, publisher: EventPublisher, temporal: TemporalClient,
                 boot_timeout_s: float, crash_policy: CrashPolicy = CrashPolicy(),
                 clock=time.time) -> None:
        self._inventory = inventory
        self._events = publisher
        self._temporal = temporal
        self._boot_timeout_s = boot_timeout_s
        self._crash_policy = crash_policy
        self._clock = clock
        self._evicting: dict[tuple[str, str], float] = {}
        self._unmanaged_since: dict[tuple[str, str], float] = {}
        self._reported: set[tuple[str, str]] = set()
        self._host_signature: dict[str, tuple[object, float]] = {}

    # -- feeds ---------------------------------------------------------------------------------

    async def on_lifecycle(self, fact: events.DomainLifecycle) -> None:
        seen = observed_from_lifecycle(fact.vm_id, fact.host_id, fact.event, fact.reason, fact.at_s,
                                       managed=fact.tenant != "unknown")
        if seen is not None:
            await self.observe(seen, source=f"libvirt on {fact.host_id}: {fact.event}/{fact.reason}")

    async def on_heartbeat(self, beat: HostHeartbeat, min_interval_s: float = 3.0) -> None:
        """Compare everything the host reports with every VM recorded on it. A host whose
        libvirt is unreachable says nothing about its domains."""
        if not beat.libvirt_ok:
            return
        signature = tuple(sorted((d.vm_id, d.state) for d in beat.domains))
        last = self._host_signature.get(beat.host_id)
        if last is not None and last[0] == signature and self._clock() - last[1] < min_interval_s:
            return
        self._host_signature[beat.host_id] = (signature, self._clock())
        reported = {d.vm_id: d for d in beat.domains}
        rows = {vm.id: vm for vm in await asyncio.to_thread(self._inventory.on_host, beat.host_id)}
        others = [vm_id for vm_id in reported if vm_id not in rows]
        if others:
            rows.update({vm.id: vm for vm in await asyncio.to_thread(self._inventory.many, others)})
        source = f"{beat.host_id}'s heartbeat"
        for vm_id, d in reported.items():
            await self.observe(Observed(vm_id, beat.host_id, d.state, d.reason, beat.sent_at_s, d.managed),
                               source, rows.get(vm_id), looked_up=True)
        for vm_id, vm in rows.items():
            if vm_id not in reported and vm.host_id == beat.host_id:
                await self.observe(Observed(vm_id, beat.host_id, "absent", "", beat.sent_at_s), source, vm,
                                   looked_up=True)

    # -- the policy, applied -------------------------------------------------------------------

    async def observe(self, seen: Observed, source: str, vm: Vm | None = None, looked_up: bool = False) -> Drift:
        if not looked_up:
            vm = await asyncio.to_thread(self._inventory.find, seen.vm_id)
        verdict = drift(recorded(vm), seen)
        if verdict is Drift.NONE:
            return verdict
        key = (seen.host_id, seen.vm_id)
        if verdict is Drift.UNMANAGED:
            await self._report_unmanaged(seen, key)
        elif verdict is Drift.STALE_COPY:
            await self._evict(seen, key, vm)
        elif verdict is Drift.LOST:
            assert vm is not None
            await self._recover(vm, f"its domain is gone from {seen.host_id} ({source})",
                                f"lost-{int(seen.at_s)}", power_on=vm.state is not VmState.STOPPED)
        elif verdict is Drift.CRASHED:
            assert vm is not None
            await self._crashed(vm, seen, source)
        else:
            assert vm is not None
            state = VmState.RUNNING if verdict is Drift.RUNNING else VmState.STOPPED
            await self._settle(vm, state, None, source)
        return verdict

    async def _settle(self, vm: Vm, state: VmState, error: str | None, source: str, **fields) -> Vm | None:
        written = await asyncio.to_thread(self._inventory.settle, vm.id, vm.state, vm.updated_at,
                                          state=state, error=error, **fields)
        if written is not None:
            log.info("inventory follows libvirt", vm_id=vm.id, was=vm.state.value, now=state.value, source=source)
            await self._publish(events.VmStateChanged(vm.id, vm.tenant, state.value, vm.host_id, error, source))
        return written

    async def _crashed(self, vm: Vm, seen: Observed, source: str) -> None:
        policy = CrashPolicy(vm.on_crash, self._crash_policy.max_restarts, self._crash_policy.window_s)
        again, history = restarts_again(policy, vm.crash_history, seen.at_s)
        why = (f"restarting it in place ({len(history)} crash(es) in {policy.window_s:g} s)" if again
               else f"left crashed (policy '{vm.on_crash.value}', {len(history)} crash(es) in {policy.window_s:g} s)")
        error = f"the guest crashed ({source}); {why}"
        written = await self._settle(vm, VmState.CRASHED, error, source, crash_history=list(history))
        if written is not None and again:
            await self._recover(written, f"the guest crashed ({source})", f"crash-{int(seen.at_s * 1000)}")

    async def _recover(self, vm: Vm, reason: str, key: str, power_on: bool = True) -> None:
        """Hold the VM for a RestartVm in place and start it; released again if it cannot start."""
        op_id = restart_workflow_id(vm.id, key)
        if not await asyncio.to_thread(self._inventory.transition, vm.id, (vm.state,), VmState.RECOVERING, op_id):
            return  # something else took the VM meanwhile
        group = None
        if vm.placement_group_id:
            g = await asyncio.to_thread(self._inventory.get_group, vm.placement_group_id, vm.tenant)
            group = GroupRule(g.id, g.policy, g.hard)
        summary = vm_summary(vm, group)
        where = f"on {vm.host_id}" if vm.host_id else ""
        try:
            await self._temporal.start_workflow(
                "RestartVm", RestartInput(summary, reason, vm.host_id, power_on=power_on,
                                          boot_timeout_s=self._boot_timeout_s),
                id=op_id, task_queue=ORCHESTRATOR_QUEUE, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                **tagged("RestartVm", operation_summary("restart", vm_label(vm.name, vm.id), where, vm.tenant),
                         vm_id=vm.id, host_ids=(vm.host_id,), tenant=vm.tenant),
            )
        except WorkflowAlreadyStartedError:
            pass
        except Exception as exc:
            log.warning("restart not started", vm_id=vm.id, error=str(exc) or type(exc).__name__)
            await asyncio.to_thread(self._inventory.update, vm.id, state=vm.state)
            return
        log.info("restarting", vm_id=vm.id, host_id=vm.host_id, reason=reason, operation_id=op_id)

    async def _evict(self, seen: Observed, key: tuple[str, str], vm: Vm | None) -> None:
        """Remove the copy of the VM ``seen`` on a host it does not live on (``vm``: its row,
        None once it is deleted)."""
        now_s = self._clock()
        if now_s - self._evicting.get(key, 0.0) < _EVICT_RETRY_S:
            return
        self._evicting[key] = now_s
        label = vm_label(vm.name if vm else None, seen.vm_id)
        try:
            await self._temporal.start_workflow(
                "RemoveStaleCopy", StaleCopy(seen.host_id, seen.vm_id),
                id=stale_copy_workflow_id(seen.vm_id, seen.host_id), task_queue=ORCHESTRATOR_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                **tagged("RemoveStaleCopy", operation_summary("remove the stale copy of", label, f"on {seen.host_id}"),
                         vm_id=seen.vm_id, host_ids=(seen.host_id,), tenant=vm.tenant if vm else None),
            )
            log.warning("removing a stale copy", vm_id=seen.vm_id, host_id=seen.host_id, state=seen.state)
        except WorkflowAlreadyStartedError:
            pass
        except Exception as exc:
            log.warning("stale copy not removed yet", vm_id=seen.vm_id, error=str(exc) or type(exc).__name__)
            self._evicting.pop(key, None)

    async def _report_unmanaged(self, seen: Observed, key: tuple[str, str]) -> None:
        first = self._unmanaged_since.setdefault(key, seen.at_s)
        if key in self._reported or seen.at_s - first < _UNMANAGED_AFTER_S:
            return
        self._reported.add(key)
        log.warning("unmanaged domain", vm_id=seen.vm_id, host_id=seen.host_id, state=seen.state)
        await self._publish(events.UnmanagedDomain(seen.vm_id, seen.host_id, seen.state, seen.managed))

    async def _publish(self, event: events.Event) -> None:
        try:
            await events.publish(self._events, event)
        except Exception as exc:
            log.warning("event not published", error=str(exc) or type(exc).__name__)


async def follow_lifecycle(js: JetStreamContext, stream: str, follower: RealityFollower) -> None:
    """A durable pull consumer on the VM events; only lifecycle facts from hosts count."""
    while True:
        try:
            sub = await js.pull_subscribe(
                f"{subjects.EVENTS_ROOT}.vm.>", durable=LIFECYCLE_CONSUMER, stream=stream,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_wait=30, max_ack_pending=1000),
            )
            while True:
                try:
                    messages = await sub.fetch(64, timeout=1)
                except TimeoutError:
                    continue
                for msg in messages:
                    try:
                        fact = events.lifecycle_from(msg.data)
                        if fact is not None:
                            await follower.on_lifecycle(fact)
                    except Exception:
                        log.exception("lifecycle event not applied", subject=msg.subject)
                    await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS away or the stream recreated: subscribe again
            log.warning("lifecycle consumer restarting", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(1)


async def follow_host_reports(js: JetStreamContext, bucket: str, follower: RealityFollower,
                              replicas: int = 1) -> None:
    """Every heartbeat, compared with the inventory (at most every few seconds per host unless
    its domains changed)."""
    while True:
        try:
            kv = await heartbeat_bucket(js, bucket, replicas)
            watcher = await kv.watchall()
            async for entry in watcher:
                if entry is None or entry.value is None:
                    continue
                try:
                    await follower.on_heartbeat(codec.decode(HostHeartbeat, entry.value))
                except Exception:
                    log.exception("host report not applied", host_id=entry.key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("host reports not followed; again", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(1)
