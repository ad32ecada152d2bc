"""The host side of a live migration: a short loop driven by the pure policy.

libvirt's migration runs in a thread; every ``policy.poll_interval_s`` the loop reads the job
stats, folds them into its view (``observe``), asks ``next_action`` what to do and does it:
raise the downtime limit, switch to post-copy, or abort. It imports no libvirt: the hypervisor
comes in through the constructor, so unit tests drive it with a fake.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from shared import metrics
from shared.errors import Timeout, VmflowError
from shared.migration import (
    ActionKind,
    MigrateRequest,
    MigrateResult,
    MigrationAction,
    MigrationProgress,
    after_escalation,
    next_action,
    observe,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CompletedMigration:
    """The final figures of a finished migration, as libvirt reports them."""

    elapsed_ms: int
    downtime_ms: int | None
    data_processed_mib: int
    iterations: int = 0
    post_copy_requests: int = 0


def disk_moves(request: MigrateRequest) -> dict[str, str]:
    """source path -> destination path of each disk the migration carries along."""
    return {move.source_path: move.dest_path for move in request.disk_moves}


def observe_migration(mode: str, elapsed_s: float, downtime_ms: int | None = None) -> None:
    """Record a completed migration (``mode``: live or cold) in the migration histograms."""
    metrics.MIGRATION_DURATION.labels(mode).observe(max(0.0, elapsed_s))
    if downtime_ms is not None:
        metrics.MIGRATION_DOWNTIME.observe(downtime_ms / 1000)


class MigrationHypervisor(Protocol):
    """What the loop needs of ``Hypervisor`` (blocking calls, run in threads)."""

    def migrate_live(self, vm_id: str, dest_uri: str, *, disk_moves: dict[str, str], auto_converge: bool,
                     post_copy: bool, bandwidth_mib_s: int, initial_downtime_ms: int | None
                     ) -> CompletedMigration | None: ...
    def job_stats(self, vm_id: str) -> MigrationProgress | None: ...
    def set_max_downtime(self, vm_id: str, downtime_ms: int) -> None: ...
    def start_post_copy(self, vm_id: str) -> None: ...
    def abort_job(self, vm_id: str) -> None: ...
    def state(self, vm_id: str) -> str: ...


class LiveMigration:
    """One live migration of ``request.vm_id`` from this host (``source_host_id``)."""

    def __init__(self, hypervisor: MigrationHypervisor, request: MigrateRequest, source_host_id: str,
                 report: Callable[[MigrationProgress], None] = lambda _progress: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hv = hypervisor
        self._req = request
        self._policy = request.policy
        self._source = source_host_id
        self._report = report
        self._clock = clock
        self._progress, self._best_remaining_mib = self._fresh_view()
        self._started_s = clock()

    async def run(self) -> MigrateResult:
        """Migrate and return the figures once the VM runs on the destination only.

        If an outgoing migration of this VM is already running (an earlier attempt's), it is
        driven to its end instead of starting a second one. Raises Timeout when the policy aborts
        it (the VM still runs here; should it have completed before the abort took hold, the
        result is returned instead), the hypervisor's error when libvirt fails it (the message
        says where the VM is), CancelledError once libvirt's job is aborted and over (the VM
        runs here, unless the migration completed first: callers check the destination)."""
        vm_id = self._req.vm_id
        if await self._call(self._hv.job_stats, vm_id) is not None:
            log.info("a migration of this VM already runs: following it", vm_id=vm_id)
            await self._drive(None)
            if await self._call(self._hv.state, vm_id) == "absent":
                return self._result(None)
            self._progress, self._best_remaining_mib = self._fresh_view()  # it failed: start anew
        policy = self._policy
        migration = asyncio.ensure_future(self._call(
            self._hv.migrate_live, vm_id, self._req.dest_uri,
            disk_moves=disk_moves(self._req), auto_converge=policy.auto_converge,
            post_copy=policy.post_copy, bandwidth_mib_s=policy.bandwidth_mib_s,
            initial_downtime_ms=self._progress.downtime_limit_ms or None,
        ))
        await self._drive(migration)
        result = self._result(migration.result())
        # Observed only for a migration this loop started and saw through (a followed one's
        # start is unknown here). Downtime is libvirt's figure from the source's job-completed
        # event; when that event did not come in time there is no honest figure to observe.
        observe_migration("live", self._clock() - self._started_s, result.downtime_ms)
        return result

    async def _drive(self, migration: asyncio.Future | None) -> None:
        """Poll and act until the migration ends: ``migration`` is our libvirt call, or None to
        follow a job started elsewhere. Returns when it completed; raises as ``run`` says."""
        try:
            while True:
                if await self._wait(migration):
                    break
                look = await self._call(self._hv.job_stats, self._req.vm_id)
                if migration is None and look is None:
                    return  # the followed job ended
                self._progress, self._best_remaining_mib = observe(
                    self._progress, self._with_loop_facts(look), self._best_remaining_mib)
                self._report(self._progress)
                if not await self._apply(next_action(self._progress, self._policy), migration):
                    break
        except asyncio.CancelledError:
            log.info("migration cancelled: aborting it", vm_id=self._req.vm_id)
            await asyncio.shield(self._abort(migration))
            raise
        if migration is not None and migration.exception() is not None:
            await self._raise_with_whereabouts(migration.exception())

    async def _apply(self, action: MigrationAction, migration: asyncio.Future | None) -> bool:
        """Do what the policy says; False when the migration is over (completed meanwhile)."""
        vm_id = self._req.vm_id
        if action.kind is ActionKind.WAIT:
            return True
        if action.kind is ActionKind.ABORT:
            log.warning("aborting the migration", vm_id=vm_id, reason=action.reason)
            await self._abort(migration)
            if migration is not None and migration.exception() is None:
                return False  # it completed before the abort took hold
            seen = self._progress
            raise Timeout(f"the migration of VM {vm_id} to {self._req.dest_host_id} {action.reason} "
                          f"(pass {seen.iteration}, {seen.data_remaining_mib} MiB left, downtime limit "
                          f"{seen.downtime_limit_ms} ms); the VM {await self._whereabouts()}")
        try:
            if action.kind is ActionKind.SET_DOWNTIME:
                assert action.downtime_ms is not None
                await self._call(self._hv.set_max_downtime, vm_id, action.downtime_ms)
                raised = replace(self._progress, downtime_limit_ms=action.downtime_ms)
                self._progress = after_escalation(raised)
            elif action.kind is ActionKind.POST_COPY:
                await self._call(self._hv.start_post_copy, vm_id)
                self._progress = replace(self._progress, post_copy=True)
        except VmflowError:
            if migration is not None and migration.done():
                return False  # the job ended under our feet: its outcome decides
            await self._abort(migration)
            raise
        log.info("migration escalated", vm_id=vm_id, action=action.kind.value,
                 downtime_ms=action.downtime_ms, reason=action.reason)
        return True

    async def _abort(self, migration: asyncio.Future | None) -> None:
        """Abort libvirt's job and wait until it has ended (the VM then runs here again)."""
        await self._call(self._hv.abort_job, self._req.vm_id)
        while not await self._wait(migration):
            if migration is None and await self._call(self._hv.job_stats, self._req.vm_id) is None:
                return
            self._report(self._progress)  # keeps the activity's heartbeat going meanwhile
        if migration is not None:
            migration.exception()  # seen: the caller tells what the outcome means

    async def _wait(self, migration: asyncio.Future | None) -> bool:
        """Sleep one poll interval, less if our migration call returns; True when it has."""
        if migration is None:
            await asyncio.sleep(self._policy.poll_interval_s)
            return False
        await asyncio.wait({migration}, timeout=self._policy.poll_interval_s)
        return migration.done()

    def _fresh_view(self) -> tuple[MigrationProgress, int]:
        steps = self._policy.downtime_steps_ms
        return MigrationProgress(downtime_limit_ms=steps[0] if steps else 0), sys.maxsize

    def _with_loop_facts(self, look: MigrationProgress | None) -> MigrationProgress:
        """libvirt's look plus what only the loop knows: the downtime limit it set, and time
        spent before libvirt's job showed up (a slow connect to the destination counts too)."""
        wall_ms = int((self._clock() - self._started_s) * 1000)
        if look is None:
            return replace(self._progress, elapsed_ms=max(self._progress.elapsed_ms, wall_ms))
        return replace(look, elapsed_ms=max(look.elapsed_ms, wall_ms),
                       downtime_limit_ms=self._progress.downtime_limit_ms)

    async def _whereabouts(self) -> str:
        state = await self._call(self._hv.state, self._req.vm_id)
        if state == "running":
            return f"still runs on {self._source}"
        if state == "absent":
            return f"is no longer on {self._source}"
        return f"is {state} on {self._source}"

    async def _raise_with_whereabouts(self, exc: BaseException) -> None:
        if isinstance(exc, VmflowError):
            raise type(exc)(f"{exc.message}; the VM {await self._whereabouts()}") from exc
        raise exc

    def _result(self, completed: CompletedMigration | None) -> MigrateResult:
        progress = self._progress
        wall_ms = int((self._clock() - self._started_s) * 1000)
        return MigrateResult(
            vm_id=self._req.vm_id,
            dest_host_id=self._req.dest_host_id,
            elapsed_ms=completed.elapsed_ms if completed else max(progress.elapsed_ms, wall_ms),
            downtime_ms=completed.downtime_ms if completed else None,
            data_transferred_mib=completed.data_processed_mib if completed else progress.data_processed_mib,
            final_downtime_limit_ms=progress.downtime_limit_ms,
            post_copy=progress.post_copy,
        )

    @staticmethod
    async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)
