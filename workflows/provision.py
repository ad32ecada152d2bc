"""ProvisionVm: place -> create volume -> define and start on the host -> wait for boot -> record."""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.models import (
        BootWaitRequest,
        DomainSpec,
        OperationProgress,
        PlacementRequest,
        ProvisionInput,
        VmRecordUpdate,
        VmRef,
        VmState,
        VolumeRequest,
    )

from workflows import steps
from workflows.saga import Saga


# A VM is provisioned once, ever: a retried or replayed start is refused, even after completion.
PROVISION_ID_REUSE = WorkflowIDReusePolicy.REJECT_DUPLICATE


def provision_workflow_id(vm_id: str) -> str:
    return f"vm-{vm_id}-provision"


@workflow.defn(name="ProvisionVm")
class ProvisionVm:
    def __init__(self) -> None:
        self._progress = OperationProgress(kind="provision", vm_id="", step="queued")

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress

    def _step(self, step: str, host_id: str | None = None) -> None:
        done = self._progress.steps_done
        if self._progress.step not in ("queued", step):
            done = (*done, self._progress.step)
        self._progress = OperationProgress(
            "provision", self._progress.vm_id, step, done, host_id or self._progress.host_id
        )

    @workflow.run
    async def run(self, inp: ProvisionInput) -> str:
        """Returns the host the VM runs on. On any failure every earlier step is undone and the
        VM leaves the inventory; the workflow then fails with the step's code and message."""
        op_id = workflow.info().workflow_id
        self._progress = OperationProgress("provision", inp.vm_id, "queued")
        saga = Saga()
        try:
            self._step("place")
            saga.on_failure("release claim", lambda: steps.release_claim(inp.vm_id))
            placement = await steps.place(
                PlacementRequest(inp.vm_id, inp.spec.vcpus, inp.spec.memory_mib, inp.spec.disk_gib)
            )
            host_id = placement.host_id
            self._step("create_volume", host_id)
            await steps.update_record(VmRecordUpdate(inp.vm_id, op_id, "create_volume", host_id=host_id))
            saga.on_failure("delete volume", lambda: steps.delete_volume(inp.vm_id))
            volume = await steps.create_volume(VolumeRequest(inp.vm_id, inp.spec.image, inp.spec.disk_gib))

            self._step("define")
            saga.on_failure("undefine domain", lambda: steps.undefine_domain(host_id, inp.vm_id))
            await steps.define_domain(
                host_id,
                DomainSpec(
                    vm_id=inp.vm_id, vm_name=inp.vm_name, tenant=inp.tenant,
                    vcpus=inp.spec.vcpus, memory_mib=inp.spec.memory_mib,
                    disk_path=volume.path, domain_type=placement.domain_type, boot=volume.image.boot,
                ),
            )
            self._step("start")
            await steps.start_domain(host_id, inp.vm_id)
            self._step("wait_booted")
            await steps.wait_booted(
                host_id, BootWaitRequest(inp.vm_id, inp.boot_timeout_s, volume.image.boot_marker)
            )
            self._step("record")
            await steps.update_record(
                VmRecordUpdate(inp.vm_id, op_id, "succeeded", state=VmState.RUNNING, host_id=host_id)
            )
            self._step("done")
            return host_id
        except BaseException as exc:
            failed_step = self._progress.step
            code, message = steps.failure_message(exc)
            self._step("compensating")
            await saga.compensate()
            error = f"{failed_step}: {message}"
            await steps.forget_record(VmRef(inp.vm_id, op_id, error=error))
            self._step("failed")
            raise ApplicationError(error, type=code, non_retryable=True) from None
