"""HostFailover: a host was declared failed. Fence it, then restart its HA VMs elsewhere.

Nothing restarts before the host is known to be off: its fence agent said so, or an operator
confirmed it (the ``confirm_fenced`` signal) after fencing kept failing. HA VMs restart in
priority order, a few at a time, each in a RestartVm child placed away from the failed host
(affinity rules kept); VMs that find no capacity are retried while the workflow waits for
capacity to appear. Non-HA VMs are recorded in error on the failed host with the reason.
The workflow id carries the host and its failure epoch, so one failure fails over once.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.failover import (
        FailoverInput,
        FenceRequest,
        RestartInput,
        failover_order,
    )
    from shared.models import (
        HostAdmin,
        HostMode,
        OperationProgress,
        VmRecordUpdate,
        VmState,
        VmSummary,
    )
    from shared.names import restart_workflow_id
    from shared.operation_tags import operation_summary, tagged

from workflows import steps
from workflows.progress import ProgressTracker
from workflows.restart import RestartVm


@workflow.defn(name="HostFailover")
class HostFailover:
    def __init__(self) -> None:
        self._progress = ProgressTracker("failover")
        self._confirmed = False

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    @workflow.signal(name="confirm_fenced")
    def confirm_fenced(self) -> None:
        """An operator says the host is off (powered down, unplugged): restarts may go ahead."""
        self._confirmed = True

    @workflow.run
    async def run(self, inp: FailoverInput) -> str:
        host = inp.host_id
        op_id = workflow.info().workflow_id
        self._progress.begin("", host)
        self._progress.note(f"{host} failed: {inp.reason}")
        self._progress.advance("fence")
        await steps.set_host_admin(HostAdmin(host, False, f"failed: {inp.reason}; fencing", HostMode.FENCING,
                                             op_id))
        await self._fence(inp)
        restarted, left, waiting = await self._restart_until_done(inp, op_id)
        self._progress.advance("done")
        summary = f"{restarted} HA VM(s) restarted off {host}; {left} left in error"
        if waiting:
            raise ApplicationError(f"{summary}; no capacity for {', '.join(waiting)}",
                                   type="no_valid_host", non_retryable=True)
        return summary

    async def _restart_until_done(self, inp: FailoverInput, op_id: str) -> tuple[int, int, list[str]]:
        """Rounds of restarts until no HA VM is left on the host (or the rounds run out). The
        host's VMs are listed anew each round: one restarted elsewhere is gone from it, one an
        operation held a moment ago may be free now, one that found no capacity is still there.
        Returns (restarted, left in error, names of the HA VMs still waiting for capacity)."""
        restarted, left = 0, 0
        given_up: set[str] = set()  # failed for a reason other than capacity: their error says why
        noted: set[str] = set()
        for round_no in range(inp.capacity_retry_rounds + 1):
            restart, leave, busy = failover_order((await steps.vms_on_host(inp.host_id)).vms)
            for vm in leave:
                if vm.vm_id not in noted:
                    noted.add(vm.vm_id)
                    left += 1
                    await self._leave(vm, inp, op_id)
            for vm in busy:
                if vm.vm_id not in noted:
                    noted.add(vm.vm_id)
                    self._progress.note(f"{vm.name}: {vm.state.value}, held by another operation; "
                                        "restarted once it is free if HA")
            restart = [vm for vm in restart if vm.vm_id not in given_up]
            if not restart and not busy:
                return restarted, left, []
            if restart:
                self._progress.advance("restart")
                outcomes = await self._restart_round(restart, inp, round_no)
                restarted += sum(1 for ok in outcomes.values() if ok is True)
                given_up |= {vm_id for vm_id, ok in outcomes.items() if ok is None}
                if not busy and all(ok is not False for ok in outcomes.values()):
                    return restarted, left, []
            self._progress.advance("waiting_for_capacity")
            await workflow.sleep(timedelta(seconds=inp.capacity_retry_s))
        restart, _leave, _busy = failover_order((await steps.vms_on_host(inp.host_id)).vms)
        return restarted, left, [vm.name for vm in restart if vm.vm_id not in given_up]

    async def _leave(self, vm: VmSummary, inp: FailoverInput, op_id: str) -> None:
        why = "its root disk is on the host's own pool" if vm.ha else "not HA"
        error = f"host {inp.host_id} failed and was fenced; {why}: start it again once the host is back"
        await steps.update_record(VmRecordUpdate(vm.vm_id, op_id, "failed_over", state=VmState.ERROR, error=error))
        self._progress.note(f"{vm.name}: left in error ({why})")

    async def _fence(self, inp: FailoverInput) -> None:
        host, op_id = inp.host_id, workflow.info().workflow_id
        try:
            result = await steps.fence(FenceRequest(host, "off"), inp.fence_attempts)
            self._progress.note(f"fenced: {host} is {result.power}")
        except Exception as exc:
            _code, message = steps.failure_message(exc)
            reason = f"fencing failed after {inp.fence_attempts} attempts: {message}; confirm by hand that it is off"
            self._progress.note(reason)
            await steps.set_host_admin(HostAdmin(host, False, reason, HostMode.FENCE_FAILED, op_id))
            self._progress.advance("awaiting_confirmation")
            await workflow.wait_condition(lambda: self._confirmed)
            self._progress.note(f"an operator confirmed {host} is off")
        await steps.set_host_admin(HostAdmin(host, False, f"fenced: {inp.reason}", HostMode.FENCED, op_id))

    async def _restart_round(self, vms: list[VmSummary], inp: FailoverInput, round_no: int) -> dict[str, bool | None]:
        """Restart ``vms`` elsewhere, at most ``inp.concurrency`` at once, highest priority first
        (each waits for a slot in order). Per VM: True restarted, False no capacity (try again
        later), None failed for another reason (given up, its error says why)."""
        limit = asyncio.Semaphore(max(1, inp.concurrency))
        outcomes = await asyncio.gather(*(self._restart(vm, inp, round_no, limit) for vm in vms))
        return {vm.vm_id: ok for vm, ok in zip(vms, outcomes)}

    async def _restart(self, vm: VmSummary, inp: FailoverInput, round_no: int,
                       limit: asyncio.Semaphore) -> bool | None:
        async with limit:
            child_id = restart_workflow_id(vm.vm_id, f"failover-{inp.host_id}-{inp.epoch}-{round_no}")
            try:
                target = await workflow.execute_child_workflow(
                    RestartVm.run,
                    RestartInput(vm, f"host {inp.host_id} failed", None, exclude_hosts=(inp.host_id,),
                                 power_on=vm.state is not VmState.STOPPED, boot_timeout_s=inp.boot_timeout_s),
                    id=child_id, task_queue=steps.ORCHESTRATOR_QUEUE,
                    **tagged("RestartVm",
                             operation_summary("restart", vm.name, f"off failed host {inp.host_id}", vm.tenant),
                             vm_id=vm.vm_id, host_ids=(inp.host_id,), tenant=vm.tenant),
                )
            except Exception as exc:
                code, message = steps.failure_message(exc)
                self._progress.note(f"{vm.name}: {message}")
                return False if code == "no_valid_host" else None
        self._progress.note(f"{vm.name}: restarted on {target}")
        return True
