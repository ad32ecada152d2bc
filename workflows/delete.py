"""DeleteVm: undefine the domain on its host, delete its volume, remove it from the inventory."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.guest import VmRelease
    from shared.models import (
        DeleteInput,
        OperationProgress,
        VmRecordUpdate,
        VmRef,
        VmState,
    )

from workflows import network_steps, steps
from workflows.progress import ProgressTracker


@workflow.defn(name="DeleteVm")
class DeleteVm:
    def __init__(self) -> None:
        self._progress = ProgressTracker("delete")

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    @workflow.run
    async def run(self, inp: DeleteInput) -> None:
        """Every step is idempotent, so a retried delete finishes what an earlier one started.
        If a step fails the VM stays in the inventory in state ``error`` with the reason."""
        op_id = workflow.info().workflow_id
        self._progress.begin(inp.vm_id, inp.host_id)
        try:
            self._progress.advance("mark_deleting")
            await steps.update_record(VmRecordUpdate(inp.vm_id, op_id, "deleting", state=VmState.DELETING))
            if inp.host_id:
                self._progress.advance("undefine")
                await steps.undefine_domain(inp.host_id, inp.vm_id)
                self._progress.advance("release_host")
                await network_steps.release_host(inp.host_id, VmRelease(inp.vm_id, remove_seed=True))
            self._progress.advance("delete_volume")
            await steps.delete_volume(inp.vm_id)
            self._progress.advance("release_claim")
            await steps.release_claim(inp.vm_id)
            self._progress.advance("forget")
            await steps.forget_record(VmRef(inp.vm_id, op_id))
            self._progress.advance("done")
        except BaseException as exc:
            code, message = steps.failure_message(exc)
            error = f"{self._progress.step}: {message}"
            await steps.update_record(
                VmRecordUpdate(inp.vm_id, op_id, "failed", state=VmState.ERROR, error=error)
            )
            raise ApplicationError(error, type=code, non_retryable=True) from None
