"""RestartVm: start a VM again that nobody asked to stop: a crashed guest (in place), a domain its
host lost (in place, defined anew), a VM whose host failed and was fenced (on another host).

The disk is never created here: a VM whose root disk is gone stays in error with that reason.
On failure whatever this run defined on a new host is removed and the claim released; the VM is
recorded in error on the host it was on, with the reason.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.failover import RestartInput
    from shared.guest import VmRelease, VmSetup
    from shared.models import (
        SETTLED_STATES,
        BeginOperation,
        BootWaitRequest,
        DomainSpec,
        DomainStatus,
        OperationProgress,
        PlacementRequest,
        VmRecordUpdate,
        VmState,
        Volume,
        VolumeRequest,
    )
    from shared.storage_models import PoolKind, local_pool_name

from workflows import network_steps, steps
from workflows.progress import ProgressTracker
from workflows.saga import Saga, all_settled


@workflow.defn(name="RestartVm")
class RestartVm:
    def __init__(self) -> None:
        self._progress = ProgressTracker("recover")

    @workflow.query(name="progress")
    def progress(self) -> OperationProgress:
        return self._progress.value

    @workflow.run
    async def run(self, inp: RestartInput) -> str:
        """Returns the host the VM is on afterwards."""
        op_id = workflow.info().workflow_id
        vm = inp.vm
        self._progress.begin(vm.vm_id, inp.host_id or vm.host_id)
        self._progress.note(inp.reason)
        saga = Saga()
        try:
            self._progress.advance("begin")
            # Where the disk is only reads; it goes along with taking the VM, to save a round trip.
            _held, root, setup = await asyncio.gather(
                steps.begin_operation(BeginOperation(vm.vm_id, op_id, (*SETTLED_STATES, VmState.RECOVERING),
                                                     VmState.RECOVERING)),
                steps.locate_root(vm.vm_id),  # NotFound: the disk is gone, nothing to restart
                network_steps.vm_setup(vm.vm_id),
            )
            host_id = inp.host_id
            if vm.storage is PoolKind.LOCAL and root.host_id not in (None, host_id):
                raise ApplicationError(f"its root disk is on {root.host_id}'s own pool, not on {host_id}",
                                       type="conflict", non_retryable=True)
            before_markers, status = 0, None
            if host_id is not None:
                self._progress.advance("check")
                volume = await steps.create_volume(self._volume_request(inp, host_id))  # the one located
                status = await steps.domain_status(host_id, BootWaitRequest(vm.vm_id, 0, volume.image.boot_marker))
                before_markers = status.marker_count
            if status is None or status.state == "absent":
                host_id, volume, status = await self._define(inp, host_id, setup, saga)
                before_markers = status.marker_count
            final = VmState.STOPPED
            if inp.power_on:
                final = VmState.RUNNING
                if status.state != "running":  # running already (it came back by itself): done
                    self._progress.advance("prepare", host_id)
                    await network_steps.prepare_host(host_id, setup)  # a host that restarted lost them
                    self._progress.advance("start", host_id)
                    await steps.start_domain(host_id, vm.vm_id)
                    self._progress.advance("wait_booted", host_id)
                    await steps.wait_booted(host_id, BootWaitRequest(
                        vm.vm_id, inp.boot_timeout_s, volume.image.boot_marker, before_markers + 1))
            self._progress.advance("record", host_id)
            await steps.update_record(VmRecordUpdate(vm.vm_id, op_id, "succeeded", state=final, host_id=host_id))
            self._progress.advance("done")
            return host_id
        except BaseException as exc:
            failed_step = self._progress.step
            code, message = steps.failure_message(exc)
            self._progress.advance("compensating")
            await saga.compensate()
            error = f"{inp.reason}; restart failed at {failed_step}: {message}"
            await steps.update_record(VmRecordUpdate(vm.vm_id, op_id, "failed", state=VmState.ERROR, error=error))
            self._progress.advance("failed")
            raise ApplicationError(error, type=code, non_retryable=True) from None

    def _volume_request(self, inp: RestartInput, host_id: str) -> VolumeRequest:
        vm = inp.vm
        pool = local_pool_name(host_id) if vm.storage is PoolKind.LOCAL else None
        return VolumeRequest(vm.vm_id, vm.image, vm.disk_gib, pool)

    async def _define(self, inp: RestartInput, host_id: str | None, setup: VmSetup,
                      saga: Saga) -> tuple[str, Volume, DomainStatus]:
        """Place the VM (on ``host_id`` only, or anywhere but the excluded hosts) and define it
        there on its existing root disk. Returns the host, the disk, and the domain's status as
        the definition was made (with the boots its console log shows already: the log lives on
        with the VM). Lookups that do not depend on each other run together."""
        vm = inp.vm
        self._progress.advance("place")
        saga.on_failure("release claim", lambda: steps.release_claim(vm.vm_id))
        local = vm.storage is PoolKind.LOCAL
        place = steps.place(PlacementRequest(
            vm.vm_id, vm.vcpus, vm.memory_mib, vm.disk_gib if local else 0,
            required_labels=vm.required_labels, group=vm.group,
            exclude_hosts=inp.exclude_hosts, only_host=host_id,
        ))
        if local:  # the disk's pool is the chosen host's
            placement = await place
            volume = await steps.create_volume(self._volume_request(inp, placement.host_id))
        else:
            settle = all_settled if workflow.patched("vmflow-restart-settle") else asyncio.gather
            placement, volume = await settle(place, steps.create_volume(self._volume_request(inp, "")))
        target = placement.host_id
        self._progress.advance("define", target)
        if target != vm.host_id:  # a definition made here, on a new host, goes again on failure
            saga.on_failure("remove the new definition", lambda: steps.evict_domain(target, vm.vm_id))
            saga.on_failure("release networks", lambda: network_steps.release_host(target, VmRelease(vm.vm_id)))
        await network_steps.prepare_host(target, setup)
        _defined, status = await asyncio.gather(
            steps.define_domain(target, DomainSpec(
                vm_id=vm.vm_id, vm_name=vm.name, tenant=vm.tenant, vcpus=vm.vcpus, memory_mib=vm.memory_mib,
                disk_path=volume.path, domain_type=placement.domain_type, boot=volume.image.boot,
                disk_gib=volume.size_gib if local else 0, group_id=vm.group.group_id if vm.group else None,
                nics=setup.nics, seed=setup.seed is not None,
            )),
            steps.domain_status(target, BootWaitRequest(vm.vm_id, 0, volume.image.boot_marker)),
        )
        return target, volume, status
