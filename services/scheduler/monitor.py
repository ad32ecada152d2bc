"""The liveness monitor beside the scheduler: judges every host from its two channels a few
times a second, publishes each change of verdict, and starts a HostFailover for a host that
failed. Several scheduler replicas may run it: the workflow id (host and failure epoch) lets
exactly one failover start per failure.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import structlog
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from services.scheduler.liveness import (
    Liveness,
    LivenessPolicy,
    Verdict,
    fleet_is_silent,
    judge_fleet,
    signals_from_heartbeats,
)
from services.scheduler.state import Scheduler
from shared import events, metrics
from shared.failover import FailoverInput
from shared.messaging import EventPublisher
from shared.models import HostMode
from shared.names import ORCHESTRATOR_QUEUE, failover_workflow_id
from shared.operation_tags import operation_summary, tagged

log = structlog.get_logger(__name__)

# A host in one of these modes is being (or was) handled: no second failover for it.
_HANDLED = (HostMode.FENCING, HostMode.FENCED, HostMode.FENCE_FAILED)


class LivenessMonitor:
    def __init__(self, scheduler: Scheduler, policy: LivenessPolicy, publisher: EventPublisher,
                 connect_temporal: Callable[[], Awaitable[Client]], boot_timeout_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._scheduler = scheduler
        self._policy = policy
        self._events = publisher
        self._connect_temporal = connect_temporal
        self._boot_timeout_s = boot_timeout_s
        self._clock = clock
        self._temporal: Client | None = None
        self._quiet_until_s = clock() + policy.grace_after_outage_s  # judge no one right after start
        self._started: set[str] = set()
        self._failing: set[str] = set()  # hosts with a failover started, until they are seen up again
        self._last_good_s: dict[str, float] = {}  # each host's last heartbeat that vouched for its libvirt

    def judge(self) -> list[Verdict]:
        now_s = self._clock()
        signals = signals_from_heartbeats(self._scheduler.heartbeats, now_s, self._policy)
        if fleet_is_silent(signals, self._policy):
            self._quiet_until_s = max(self._quiet_until_s, now_s + self._policy.grace_after_outage_s)
        return judge_fleet(signals, self._policy, now_s, self._quiet_until_s)

    async def tick(self) -> None:
        for host_id, beat in self._scheduler.heartbeats.items():
            if beat.libvirt_ok:
                self._last_good_s[host_id] = max(self._last_good_s.get(host_id, 0.0), beat.sent_at_s)
        for verdict in self.judge():
            previous = self._scheduler.liveness.get(verdict.host_id)
            self._scheduler.set_liveness(verdict)
            if previous is None or previous.liveness != verdict.liveness:
                log.info("host liveness", host_id=verdict.host_id, liveness=verdict.liveness.value,
                         reason=verdict.reason)
                await self._publish(events.HostLiveness(verdict.host_id, verdict.liveness.value, verdict.reason),
                                    self._verdict_id(verdict))
            if verdict.liveness is Liveness.UP:
                self._failing.discard(verdict.host_id)
            elif verdict.liveness is Liveness.FAILED:
                await self._fail_over(verdict)

    async def _fail_over(self, verdict: Verdict) -> None:
        host_id = verdict.host_id
        admin = self._scheduler.admin.get(host_id)
        if host_id in self._failing or (admin is not None and admin.mode in _HANDLED):
            return
        # The failure's epoch: when the host was last good. A worker restarting on a dead host
        # (heartbeats that say libvirt is unreachable) does not make it a new failure.
        last_heard_s = self._last_good_s.get(host_id) or self._scheduler.heartbeats[host_id].sent_at_s
        epoch = int(last_heard_s)
        workflow_id = failover_workflow_id(host_id, epoch)
        if workflow_id in self._started:
            return
        try:
            await self._start_failover(workflow_id, FailoverInput(
                host_id, epoch, verdict.reason, boot_timeout_s=self._boot_timeout_s))
            log.warning("host failed: failover started", host_id=host_id, operation_id=workflow_id,
                        reason=verdict.reason)
            # Only the replica that started it observes; the host's clock stamped its heartbeat,
            # so clock skew between host and scheduler shows here too.
            metrics.FAILOVER_DETECTION.observe(max(0.0, self._clock() - last_heard_s))
        except WorkflowAlreadyStartedError:
            pass  # another replica started it, or this one before a restart
        except Exception as exc:  # Temporal away: the next tick tries again
            log.warning("failover not started yet", host_id=host_id, error=str(exc) or type(exc).__name__)
            return
        self._started.add(workflow_id)
        self._failing.add(host_id)

    async def connect(self) -> None:
        """Connect to Temporal now rather than at the first failure (its gauge then tells the
        truth); a Temporal that is away is tried again by the next failover."""
        try:
            self._temporal = self._temporal or await self._connect_temporal()
        except Exception as exc:
            log.warning("Temporal not reached yet", error=str(exc) or type(exc).__name__)

    async def _start_failover(self, workflow_id: str, failover: FailoverInput) -> None:
        """Start the failover, tagged for the Temporal UI; a server that refuses the tags (its
        search attributes not registered) still gets the failover, untagged: HA comes first."""
        if self._temporal is None:
            self._temporal = await self._connect_temporal()
        start = functools.partial(
            self._temporal.start_workflow, "HostFailover", failover, id=workflow_id, task_queue=ORCHESTRATOR_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        try:
            await start(**tagged("HostFailover", operation_summary("failover of", failover.host_id),
                                 host_ids=(failover.host_id,)))
        except RPCError as exc:
            if exc.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
            log.error("failover started without search attributes", error=exc.message, operation_id=workflow_id)
            await start()

    def _verdict_id(self, verdict: Verdict) -> str:
        """The same for every replica that reaches this verdict, so the stream keeps one event
        however many replicas publish it: a host back up is named by the heartbeat that shows
        it (each replica judges it before the next one comes), any other verdict by the host's
        last good heartbeat, which no later heartbeat changes."""
        beat = self._scheduler.heartbeats.get(verdict.host_id)
        seen_s = beat.sent_at_s if beat is not None else 0.0
        if verdict.liveness is not Liveness.UP:
            seen_s = self._last_good_s.get(verdict.host_id, seen_s)
        return f"liveness-{verdict.host_id}-{verdict.liveness.value}-{int(seen_s * 1000)}"

    async def _publish(self, event: events.HostLiveness, event_id: str) -> None:
        try:
            await events.publish(self._events, event, event_id)
        except Exception as exc:
            log.warning("liveness event not published", error=str(exc) or type(exc).__name__)


async def run_monitor(monitor: LivenessMonitor, interval_s: float) -> None:
    while True:
        try:
            await monitor.tick()
        except Exception:
            log.exception("liveness check failed")
        await asyncio.sleep(interval_s)
