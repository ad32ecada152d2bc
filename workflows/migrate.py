"""LiveMigrate: move a VM to another host, live when it runs, its definition when it is stopped.

Whatever happens, the operation ends in a known state: the VM runs (or is defined) on exactly one
host, the inventory names that host, and the target's capacity claim is released on failure.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from shared.migration import MigrateInput, MigrateRequest
    from shared.models import (
        BeginOperation,
        BootWaitRequest,
        OperationProgress,
        PlacementRequest,
        VmRecordUpdate,
        VmState,
    )

from workflows import steps
from workflows.progress import ProgressTracker


def migrate_workflow_id(vm_id: str, op_suffix: str) -> str:
    return f"vm-{vm_id}-migrate-{op_suffix}"


@workflow.defn(name="LiveMigrate")
class LiveMigrate:
    def __init__(self) -> None:
        self._progress = ProgressTracker("migrate")

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    @workflow.run
    async def run(self, inp: MigrateInput) -> str:
        """Returns the host the VM is on afterwards. Fails (or is cancelled) with the VM where it
        was, recorded as such."""
        op_id = workflow.info().workflow_id
        vm, source = inp.vm, inp.vm.host_id or ""
        live = vm.state is not VmState.STOPPED  # the state the VM was in when the move was asked
        settled = VmState.RUNNING if live else VmState.STOPPED
        self._progress.begin(vm.vm_id, source)
        target = inp.target_host_id
        try:
            if not inp.claimed:
                self._progress.advance("begin")
                await steps.begin_operation(BeginOperation(vm.vm_id, op_id, (settled,), VmState.MIGRATING))
            self._progress.advance("check")
            status = await steps.domain_status(source, BootWaitRequest(vm.vm_id, 0))
            expected = "running" if live else "shutoff"
            if status.state != expected:
                raise ApplicationError(f"the VM is {status.state} on {source}, expected {expected}",
                                       type="conflict", non_retryable=True)
            self._progress.advance("place")
            placement = await steps.place(PlacementRequest(
                vm.vm_id, vm.vcpus, vm.memory_mib, vm.disk_gib, required_labels=vm.required_labels,
                group=vm.group, exclude_hosts=(source,), only_host=target,
            ))
            target = placement.host_id
            self._progress.advance("migrate", target)
            self._progress.note(f"{'live' if live else 'cold'} migration {source} -> {target}")
            result = await steps.migrate_domain(source, MigrateRequest(
                vm.vm_id, target, placement.migration_uri, live=live, policy=inp.policy,
            ))
            if result.downtime_ms is not None:
                self._progress.note(f"took {result.elapsed_ms} ms, downtime {result.downtime_ms} ms")
            self._progress.advance("record")
            await steps.update_record(VmRecordUpdate(vm.vm_id, op_id, "succeeded", state=settled, host_id=target))
            self._progress.advance("done")
            return target
        except BaseException as exc:
            cancelled = is_cancelled_exception(exc) or isinstance(exc, asyncio.CancelledError)
            code, message = ("cancelled", "cancelled by request") if cancelled else steps.failure_message(exc)
            error = f"{self._progress.value.step}: {message}"
            self._progress.advance("recovering")
            where = await self._settle(vm.vm_id, source, target, op_id, settled, error)
            self._progress.note(f"the VM stays on {where}")
            self._progress.advance("cancelled" if cancelled else "failed")
            if cancelled:
                raise
            raise ApplicationError(f"{error}; the VM is on {where}", type=code, non_retryable=True) from None

    async def _settle(self, vm_id: str, source: str, target: str | None, op_id: str, settled: VmState,
                      error: str) -> str:
        """After a failure: release the target's claim, find where the VM really is, record it."""
        await steps.release_claim(vm_id)
        where = source
        status = await steps.domain_status(source, BootWaitRequest(vm_id, 0))
        if status.state == "absent" and target:
            # The move completed before the failure (e.g. an answer lost on the way back).
            if (await steps.domain_status(target, BootWaitRequest(vm_id, 0))).state != "absent":
                where = target
        await steps.update_record(VmRecordUpdate(vm_id, op_id, "failed", state=settled, host_id=where,
                                                 error=error))
        return where

