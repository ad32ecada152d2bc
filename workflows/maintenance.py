"""HostMaintenance: stop placing on a host and move every VM off it, a few at a time.

Each VM moves in a LiveMigrate child workflow. The host ends either in maintenance (empty) or in
maintenance_failed with the reason, never half-done silently.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.migration import MaintenanceInput, MigrateInput
    from shared.models import HostAdmin, HostMode, OperationProgress, VmState, VmSummary
    from shared.names import migrate_workflow_id
    from shared.operation_tags import move_route, operation_summary, tagged

from workflows import steps
from workflows.migrate import LiveMigrate
from workflows.progress import ProgressTracker

_MOVABLE = (VmState.RUNNING, VmState.STOPPED)


@workflow.defn(name="HostMaintenance")
class HostMaintenance:
    def __init__(self) -> None:
        self._progress = ProgressTracker("maintenance")

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    @workflow.run
    async def run(self, inp: MaintenanceInput) -> str:
        host = inp.host_id
        self._progress.begin("", host)
        self._progress.advance("disable")
        await steps.set_host_admin(HostAdmin(host, False, "entering maintenance", HostMode.MAINTENANCE))
        self._progress.advance("evacuate")
        vms = (await steps.vms_on_host(host)).vms
        limit = asyncio.Semaphore(max(1, inp.concurrency))
        fates = await asyncio.gather(*(self._move(vm, inp, limit) for vm in vms))
        failures = [fate for ok, fate in fates if not ok]
        self._progress.advance("record")
        if failures:
            reason = f"maintenance failed: {'; '.join(failures)}"
            await steps.set_host_admin(HostAdmin(host, False, reason, HostMode.MAINTENANCE_FAILED))
            self._progress.advance("failed")
            raise ApplicationError(reason, type="conflict", non_retryable=True)
        await steps.set_host_admin(HostAdmin(host, False, "in maintenance", HostMode.MAINTENANCE))
        self._progress.advance("done")
        return f"{len(vms)} VM(s) moved off {host}"

    async def _move(self, vm: VmSummary, inp: MaintenanceInput, limit: asyncio.Semaphore) -> tuple[bool, str]:
        if vm.state not in _MOVABLE:
            return self._fate(False, f"{vm.name} is {vm.state.value}, cannot move")
        async with limit:
            child_id = migrate_workflow_id(vm.vm_id, workflow.uuid4().hex[:8])
            try:
                target = await workflow.execute_child_workflow(
                    LiveMigrate.run, MigrateInput(vm, None, inp.policy), id=child_id,
                    task_queue=steps.ORCHESTRATOR_QUEUE,
                    **tagged("LiveMigrate", operation_summary("live-migrate", vm.name, move_route(vm.host_id, None),
                                                              vm.tenant),
                             vm_id=vm.vm_id, host_ids=(vm.host_id,), tenant=vm.tenant),
                )
            except Exception as exc:
                _code, message = steps.failure_message(exc)
                return self._fate(False, f"{vm.name}: {message}")
        return self._fate(True, f"{vm.name} moved to {target}")

    def _fate(self, ok: bool, line: str) -> tuple[bool, str]:
        self._progress.note(line)
        return ok, line
