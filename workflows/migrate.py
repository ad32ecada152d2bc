"""LiveMigrate: move a VM to another host, live when it runs, its definition when it is stopped.

A root disk on the source's own pool moves along: copied whole before a cold move, into an
empty overlay by libvirt during a live one. Whatever happens, the operation ends in a known
state: the VM runs (or is defined) on exactly one host, the inventory names that host, only
the copy of the disk that host uses remains, and the target's capacity claim is released on
failure. Where is decided by what the hosts' libvirt say; when neither can vouch for the VM,
it is recorded in error with the reason, for an operator, and no disk copy is dropped.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from shared.guest import VmRelease, VmSetup
    from shared.migration import (
        DiskMove,
        MigrateInput,
        MigrateRequest,
        migration_placement,
        whereabouts,
    )
    from shared.models import (
        BeginOperation,
        BootWaitRequest,
        DomainStatus,
        OperationProgress,
        Placement,
        RootCopy,
        RootDisk,
        RootDiskRef,
        VmRecordUpdate,
        VmState,
    )
    from shared.storage_models import local_pool_name

from workflows import network_steps, steps
from workflows.progress import ProgressTracker
from workflows.saga import all_settled

PREPARE_WITH_CHECKS_PATCH = "vmflow-migrate-prepare-with-checks"
RECORD_NOW_PATCH = "vmflow-migrate-record-now"


async def _placed(placement: Placement) -> Placement:
    return placement


@workflow.defn(name="LiveMigrate")
class LiveMigrate:
    def __init__(self) -> None:
        self._progress = ProgressTracker("migrate")
        self._disk_pools: tuple[str, str] | None = None  # (source pool, target pool) of a moving disk
        self._target: str | None = None  # the host asked for, then the one chosen

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    @workflow.run
    async def run(self, inp: MigrateInput) -> str:
        """Returns the host the VM is on afterwards (also when the move completed but its answer
        was lost). Fails (or is cancelled) with the VM where it was, recorded as such."""
        op_id = workflow.info().workflow_id
        vm, source = inp.vm, inp.vm.host_id or ""
        live = vm.state is not VmState.STOPPED  # the state the VM was in when the move was asked
        settled = VmState.RUNNING if live else VmState.STOPPED
        self._progress.begin(vm.vm_id, source)
        self._target = inp.target_host_id
        try:
            if not inp.claimed:
                self._progress.advance("begin")
                await steps.begin_operation(BeginOperation(vm.vm_id, op_id, (settled,), VmState.MIGRATING))
            self._progress.advance("check")
            place = functools.partial(steps.place, migration_placement(vm, self._target))
            root, placement = await self._check_and_choose(inp, source, live, place)
            target = placement.host_id
            moves: tuple[DiskMove, ...] = ()
            if root.host_id is not None:
                self._disk_pools = (root.pool, local_pool_name(target))
                copy_req = RootCopy(vm.vm_id, *self._disk_pools)
                # Live: libvirt fills an empty overlay as it goes. Cold: nothing runs to copy it.
                self._progress.advance("prepare_disk" if live else "copy_disk", target)
                copy = await (steps.prepare_root(copy_req) if live else steps.copy_root(copy_req))
                moves = (DiskMove(root.path, copy.path),)
            self._progress.advance("migrate", target)
            self._progress.note(f"{'live' if live else 'cold'} migration {source} -> {target}"
                                + (f", root disk {root.pool} -> {self._disk_pools[1]}" if moves else ""))
            result = await steps.migrate_domain(source, MigrateRequest(
                vm.vm_id, target, placement.migration_uri, live=live, policy=inp.policy, disk_moves=moves,
            ))
            if result.downtime_ms is not None:
                self._progress.note(f"took {result.elapsed_ms} ms, downtime {result.downtime_ms} ms "
                                    f"(limit {result.final_downtime_limit_ms} ms), "
                                    f"{result.data_transferred_mib} MiB copied"
                                    + (", finished in post-copy" if result.post_copy else ""))
            await self._record_move(vm.vm_id, op_id, settled, source, target, source_released=result.source_released)
            return target
        except BaseException as exc:
            cancelled = is_cancelled_exception(exc) or isinstance(exc, asyncio.CancelledError)
            code, message = ("cancelled", "cancelled by request") if cancelled else steps.failure_message(exc)
            error = f"{self._progress.value.step}: {message}"
            target = self._target
            self._progress.advance("recovering")
            await steps.release_claim(vm.vm_id, target or "")
            where, confirmed = await self._locate(vm.vm_id, source, target)
            if confirmed and where != source and not cancelled:
                # The move itself completed; only its answer went missing (e.g. the source's
                # worker died while libvirt finished the job).
                self._progress.note(f"the move completed although {message}")
                await self._record_move(vm.vm_id, op_id, settled, source, where)
                return where
            where = await self._record_failure(vm.vm_id, op_id, settled, source, target, where, confirmed, error)
            if confirmed and target and where == source:
                await self._release(target, vm.vm_id)
            self._progress.note(f"the VM stays on {where}")
            self._progress.advance("cancelled" if cancelled else "failed")
            if cancelled:
                raise
            raise ApplicationError(f"{error}; the VM is on {where}", type=code, non_retryable=True) from None

    async def _check_and_choose(self, inp: MigrateInput, source: str, live: bool,
                                place: Callable[[], Awaitable[Placement]]) -> tuple[RootDisk, Placement]:
        """Check that the VM may move, choose its target and prepare the target's side of it.
        Returns where its root disk is and the placement."""
        vm_id = inp.vm.vm_id
        if inp.root is not None and inp.setup is not None:
            # The API read the disks and networks with the request, and the source's worker
            # refuses a VM in the wrong state as the move starts: no round trip to check.
            self._check_disks(inp.root, source)
            if inp.placement is not None:  # placed by the caller too: its claim is held there
                self._target = inp.placement.host_id
                place = functools.partial(_placed, inp.placement)
            return inp.root, await self._place_and_prepare(vm_id, inp.setup, place)
        checks = [steps.domain_status(source, BootWaitRequest(vm_id, 0)), steps.locate_root(vm_id)]
        if workflow.patched(PREPARE_WITH_CHECKS_PATCH):
            # The target is chosen and its networks prepared while the checks run: two round
            # trips less. A check that fails undoes both on the way out, as any failure does.
            status, root, placement = await all_settled(*checks, self._place_and_prepare(vm_id, inp.setup, place))
            self._check(status, root, source, live)
            return root, placement
        # As runs an older worker started go on.
        checks.append(network_steps.vm_setup(vm_id))
        placed_early = workflow.patched("vmflow-migrate-place-with-checks")
        if placed_early:
            status, root, setup, placement = await all_settled(*checks, place())
        else:
            status, root, setup = await asyncio.gather(*checks)
        self._check(status, root, source, live)
        if not placed_early:
            self._progress.advance("place")
            placement = await place()
        self._target = placement.host_id
        self._progress.advance("prepare_host", self._target)
        await network_steps.prepare_host(self._target, setup)
        return root, placement

    async def _place_and_prepare(self, vm_id: str, setup: VmSetup | None,
                                 place: Callable[[], Awaitable[Placement]]) -> Placement:
        """Choose the target and put the VM's networks (and seed) in place there before it
        arrives; a VM with neither needs nothing there."""
        if setup is None:
            setup, placement = await all_settled(network_steps.vm_setup(vm_id), place())
        else:
            placement = await place()
        self._target = placement.host_id
        if setup.networks or setup.seed is not None:
            self._progress.advance("prepare_host", self._target)
            await network_steps.prepare_host(self._target, setup)
        return placement

    def _check(self, status: DomainStatus, root: RootDisk, source: str, live: bool) -> None:
        """Refuse a move the VM's state or its disks do not allow."""
        expected = "running" if live else "shutoff"
        if status.state != expected:
            raise ApplicationError(f"the VM is {status.state} on {source}, expected {expected}",
                                   type="conflict", non_retryable=True)
        self._check_disks(root, source)

    def _check_disks(self, root: RootDisk, source: str) -> None:
        if root.host_id not in (None, source):
            raise ApplicationError(f"the VM is on {source} but its root disk is in {root.pool}",
                                   type="conflict", non_retryable=True)
        if root.local_data_volumes:
            raise ApplicationError(f"data volume(s) {', '.join(root.local_data_volumes)} on {source}'s own "
                                   "pool cannot move with the VM: detach them first",
                                   type="conflict", non_retryable=True)

    async def _record_move(self, vm_id: str, op_id: str, settled: VmState, source: str, target: str,
                           source_released: bool = False) -> None:
        self._progress.advance("record")
        update = VmRecordUpdate(vm_id, op_id, "succeeded", state=settled, host_id=target, from_host_id=source)
        # patched: a run that an older worker recorded through the task queue replays so.
        record = steps.record_now if workflow.patched(RECORD_NOW_PATCH) else steps.update_record
        work = [record(update)]
        if not source_released:  # the source's worker released it as the VM left, or is asked now
            work.append(self._release(source, vm_id))
        if self._disk_pools:  # the copy left on the source goes meanwhile
            work.append(steps.drop_root(RootDiskRef(vm_id, self._disk_pools[0])))
        await asyncio.gather(*work)
        self._progress.advance("done")

    async def _release(self, host_id: str, vm_id: str) -> None:
        """The host the VM left drops what it carried for it; one that cannot be reached does so
        when its worker next reconciles, so this never fails the move."""
        try:
            await network_steps.release_host(host_id, VmRelease(vm_id))
        except Exception as exc:
            workflow.logger.warning("VM %s: %s keeps its networks for now: %s", vm_id, host_id, exc)

    async def _locate(self, vm_id: str, source: str, target: str | None) -> tuple[str, bool]:
        """Where the VM is after a failure, asking both hosts' libvirt at once: (host, confirmed)."""
        source_probe = steps.probe_domain(source, vm_id)
        if target:
            source_state, target_state = await asyncio.gather(source_probe, steps.probe_domain(target, vm_id))
        else:
            source_state, target_state = await source_probe, None
        return whereabouts(source, target, source_state, target_state)

    async def _record_failure(self, vm_id: str, op_id: str, settled: VmState, source: str, target: str | None,
                              where: str, confirmed: bool, error: str) -> str:
        """Record the failed move where the VM is. When no host vouched for it, the VM is recorded
        in error on its source and every copy of its disk is kept: an operator decides, nothing
        is destroyed on a guess. Returns where the VM is, as the message should say it."""
        if not confirmed:
            error = f"{error}; neither {source} nor {target or 'a target'} confirmed where the VM is"
        await steps.update_record(VmRecordUpdate(vm_id, op_id, "failed", state=settled if confirmed else VmState.ERROR,
                                                 host_id=where, error=error))
        if self._disk_pools and confirmed:  # keep the copy of the disk the VM uses where it is
            source_pool, target_pool = self._disk_pools
            await steps.drop_root(RootDiskRef(vm_id, target_pool if where == source else source_pool))
        return where if confirmed else f"{where} (unconfirmed)"
