"""ProvisionVm: place -> create volume -> define and start on the host -> wait for boot -> record."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.guest import VmRelease
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
    from shared.storage_models import PoolKind, local_pool_name

from workflows import network_steps, steps
from workflows.progress import ProgressTracker
from workflows.saga import Saga, all_settled

# A VM is provisioned once, ever: a retried or replayed start is refused, even after completion.
PROVISION_ID_REUSE = WorkflowIDReusePolicy.REJECT_DUPLICATE
CREATE_DOMAIN_PATCH = "vmflow-provision-create-domain"


@workflow.defn(name="ProvisionVm")
class ProvisionVm:
    def __init__(self) -> None:
        self._progress = ProgressTracker("provision")

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    @workflow.run
    async def run(self, inp: ProvisionInput) -> str:
        """Returns the host the VM runs on. On any failure every earlier step is undone and the
        VM leaves the inventory; the workflow then fails with the step's code and message."""
        op_id = workflow.info().workflow_id
        self._progress.begin(inp.vm_id)
        saga = Saga()
        try:
            self._progress.advance("place")
            placed: list[str] = []  # the host, once placement answered: the release goes straight there
            saga.on_failure("release claim", lambda: steps.release_claim(inp.vm_id, *placed))
            local = inp.spec.storage is PoolKind.LOCAL  # else the disk takes nothing of the host's
            together = workflow.patched("vmflow-provision-record-with-volume")
            placement, setup = await (all_settled if together else asyncio.gather)(
                steps.place(PlacementRequest(
                    inp.vm_id, inp.spec.vcpus, inp.spec.memory_mib, inp.spec.disk_gib if local else 0,
                    domain_types=inp.domain_types, required_labels=inp.required_labels, group=inp.group,
                )),
                network_steps.vm_setup(inp.vm_id),
            )
            host_id = placement.host_id
            placed.append(host_id)
            self._progress.advance("create_volume", host_id)
            recorded = steps.update_record(VmRecordUpdate(inp.vm_id, op_id, "create_volume", host_id=host_id))
            if not together:
                await recorded
            saga.on_failure("delete volume", lambda: steps.delete_volume(inp.vm_id))
            pool = local_pool_name(host_id) if local else None
            saga.on_failure("release networks and seed",
                            lambda: network_steps.release_host(host_id, VmRelease(inp.vm_id, remove_seed=True)))
            # The disk, the host's side of the guest (networks, seed) and the record of where the
            # VM goes do not wait for each other.
            volume, *_ = await all_settled(
                steps.create_volume(VolumeRequest(inp.vm_id, inp.spec.image, inp.spec.disk_gib, pool)),
                network_steps.prepare_host(host_id, setup),
                *([recorded] if together else []),
            )

            saga.on_failure("undefine domain", lambda: steps.undefine_domain(host_id, inp.vm_id))
            spec = DomainSpec(
                vm_id=inp.vm_id, vm_name=inp.vm_name, tenant=inp.tenant,
                vcpus=inp.spec.vcpus, memory_mib=inp.spec.memory_mib,
                disk_path=volume.path, domain_type=placement.domain_type, boot=volume.image.boot,
                disk_gib=volume.size_gib if local else 0, group_id=inp.group.group_id if inp.group else None,
                nics=setup.nics, seed=setup.seed is not None,
            )
            if workflow.patched(CREATE_DOMAIN_PATCH):
                self._progress.advance("start")
                await steps.create_domain(host_id, spec)  # defined and started: one round trip
            else:  # as runs an older worker started go on
                self._progress.advance("define")
                await steps.define_domain(host_id, spec)
                self._progress.advance("start")
                await steps.start_domain(host_id, inp.vm_id)
            self._progress.advance("wait_booted")
            await steps.wait_booted(
                host_id, BootWaitRequest(inp.vm_id, inp.boot_timeout_s, volume.image.boot_marker)
            )
            self._progress.advance("record")
            await steps.update_record(
                VmRecordUpdate(inp.vm_id, op_id, "succeeded", state=VmState.RUNNING, host_id=host_id)
            )
            self._progress.advance("done")
            return host_id
        except BaseException as exc:
            failed_step = self._progress.step
            code, message = steps.failure_message(exc)
            self._progress.advance("compensating")
            await saga.compensate()
            error = f"{failed_step}: {message}"
            await steps.forget_record(VmRef(inp.vm_id, op_id, error=error))
            self._progress.advance("failed")
            raise ApplicationError(error, type=code, non_retryable=True) from None

