"""VmPowerAction: start, stop (graceful with a timeout, then forced) and reboot."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.models import (
        BootWaitRequest,
        OperationProgress,
        PowerAction,
        PowerInput,
        StopRequest,
        VmRecordUpdate,
        VmState,
    )

from workflows import network_steps, steps
from workflows.progress import ProgressTracker

_TRANSITIONAL = {
    PowerAction.START: VmState.STARTING,
    PowerAction.STOP: VmState.STOPPING,
    PowerAction.REBOOT: VmState.REBOOTING,
}


@workflow.defn(name="VmPowerAction")
class VmPowerAction:
    def __init__(self) -> None:
        self._progress = ProgressTracker("power")

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    @workflow.run
    async def run(self, inp: PowerInput) -> str:
        """Returns the VM's resulting state. Start and reboot wait for the guest to print its boot
        marker once more than before."""
        op_id = workflow.info().workflow_id
        self._progress = ProgressTracker(f"power-{inp.action.value}")
        self._progress.begin(inp.vm_id, inp.host_id)
        boot = BootWaitRequest(inp.vm_id, inp.boot_timeout_s, inp.boot_marker)
        try:
            await steps.update_record(VmRecordUpdate(inp.vm_id, op_id, inp.action.value, state=_TRANSITIONAL[inp.action]))
            before = await steps.domain_status(inp.host_id, boot)
            stop = StopRequest(inp.vm_id, inp.timeout_s, inp.force)
            final = VmState.RUNNING
            if inp.action is PowerAction.STOP:
                self._progress.advance("stop")
                await steps.stop_domain(inp.host_id, stop)
                final = VmState.STOPPED
            elif inp.action is PowerAction.REBOOT:
                self._progress.advance("reboot")
                await steps.reboot_domain(inp.host_id, stop)
            else:
                self._progress.advance("prepare")
                await network_steps.prepare_host(inp.host_id, await network_steps.vm_setup(inp.vm_id))
                self._progress.advance("start")
                await steps.start_domain(inp.host_id, inp.vm_id)
            if final is VmState.RUNNING:
                self._progress.advance("wait_booted")
                await steps.wait_booted(
                    inp.host_id,
                    BootWaitRequest(inp.vm_id, inp.boot_timeout_s, inp.boot_marker, before.marker_count + 1),
                )
            self._progress.advance("record")
            await steps.update_record(VmRecordUpdate(inp.vm_id, op_id, "succeeded", state=final))
            self._progress.advance("done")
            return final.value
        except BaseException as exc:
            code, message = steps.failure_message(exc)
            error = f"{self._progress.step}: {message}"
            await steps.update_record(VmRecordUpdate(inp.vm_id, op_id, "failed", state=VmState.ERROR, error=error))
            raise ApplicationError(error, type=code, non_retryable=True) from None
