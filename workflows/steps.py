"""Typed calls to the platform's activities, with the timeouts and retries each one needs.

Activities are called by name and task queue; a host's activities run on ``host.<host_id>``,
so work for a host is only ever picked up by that host's worker.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from shared.errors import ERROR_CODES
    from shared.failover import FenceRequest, FenceResult
    from shared.migration import MigrateRequest, MigrateResult
    from shared.models import (
        BeginOperation,
        BootWaitRequest,
        ClaimRelease,
        DomainRef,
        DomainSpec,
        DomainStatus,
        HostAdmin,
        HostRef,
        HostView,
        Placement,
        PlacementRequest,
        RootCopy,
        RootDisk,
        RootDiskRef,
        StopRequest,
        VmList,
        VmRecordUpdate,
        VmRef,
        Volume,
        VolumeRef,
        VolumeRequest,
    )
    from shared.names import (
        FENCING_QUEUE,
        INVENTORY_QUEUE,
        ORCHESTRATOR_QUEUE,
        STORAGE_QUEUE,
        host_queue,
    )
    from shared.quota import HoldChanges


_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=5,
)
_QUICK = timedelta(seconds=30)
# A host whose worker does not pick up work within this time is treated as unavailable.
_HOST_PICKUP = timedelta(seconds=30)
# Long host activities report every 2 s; the server gives up after this long without one, and
# the next attempt goes to the worker that replaced a dead one (the supervisor restarts it within
# seconds), so an operation resumes within about this long after its host's worker died. Not
# shorter: a burst of provisions was seen keeping the single-shard dev server from recording
# heartbeats for over ten seconds while the host was fine.
_HOST_HEARTBEAT = timedelta(seconds=20)
# Storage copies heartbeat every couple of seconds too; a storage worker that died mid-copy is
# noticed within this, not hours later.
COPY_HEARTBEAT = timedelta(seconds=30)


def failure_message(exc: BaseException) -> tuple[str, str]:
    """(code, message) of the innermost application error behind an activity or child failure."""
    cause: BaseException | None = exc
    while isinstance(cause, (ActivityError, ChildWorkflowError)) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.type or "internal", cause.message
    return "internal", str(cause)


async def run_activity(queue: str, name: str, arg: object, result_type: type | None = None,
               timeout: timedelta = _QUICK, heartbeat: timedelta | None = None, **options):
    """An activity on ``queue``, retried by ``_RETRY`` unless ``options`` say otherwise."""
    options.setdefault("retry_policy", _RETRY)
    return await workflow.execute_activity(
        name, arg, task_queue=queue, result_type=result_type,
        start_to_close_timeout=timeout, heartbeat_timeout=heartbeat, **options,
    )


async def on_host(host_id: str, name: str, arg: object, result_type: type | None = None,
                  timeout: timedelta = _QUICK, heartbeat: timedelta | None = _HOST_HEARTBEAT, **options):
    """An activity on the host's own queue; a host that picks nothing up is unavailable. Every
    host activity heartbeats while it runs (the worker does it for each), so one whose worker
    died goes on with the worker that replaced it within ``_HOST_HEARTBEAT``."""
    options.setdefault("schedule_to_start_timeout", _HOST_PICKUP)
    return await run_activity(host_queue(host_id), name, arg, result_type, timeout, heartbeat, **options)


# Placement waits out a moment of silence (a NATS or scheduler restart: heartbeats missing, no
# scheduler answering) for about 40 s; a refusal for lack of capacity is final at once.
_PLACE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(seconds=3),
    maximum_attempts=18,
    non_retryable_error_types=["no_valid_host", "invalid_request", "not_found", "conflict"],
)


async def place(req: PlacementRequest) -> Placement:
    """A local activity: the orchestrator worker asks the scheduler itself, within the workflow
    task, instead of queueing a task for itself (a round trip to Temporal less)."""
    if workflow.patched("vmflow-local-place"):
        return await workflow.execute_local_activity(
            "scheduler.place", req, result_type=Placement, start_to_close_timeout=_QUICK, retry_policy=_PLACE_RETRY)
    return await run_activity(ORCHESTRATOR_QUEUE, "scheduler.place", req, Placement, retry_policy=_PLACE_RETRY)


async def release_claim(vm_id: str, host_id: str = "") -> None:
    """``host_id``: where it was placed, when known (the scheduler then reads that host's claims
    even if it has not seen the claim yet)."""
    await run_activity(ORCHESTRATOR_QUEUE, "scheduler.release", ClaimRelease(vm_id, host_id))


async def set_host_admin(admin: HostAdmin) -> HostView:
    return await run_activity(ORCHESTRATOR_QUEUE, "scheduler.set_host_admin", admin, HostView)


async def create_volume(req: VolumeRequest) -> Volume:
    return await run_activity(STORAGE_QUEUE, "storage.create_volume", req, Volume, timedelta(minutes=5))


async def delete_volume(vm_id: str) -> None:
    await run_activity(STORAGE_QUEUE, "storage.delete_volume", VolumeRef(vm_id), timeout=timedelta(minutes=2))


async def locate_root(vm_id: str) -> RootDisk:
    return await run_activity(STORAGE_QUEUE, "storage.locate_root", VolumeRef(vm_id), RootDisk)


async def copy_root(req: RootCopy) -> RootDisk:
    """A whole copy of a stopped VM's root volume: as long as the disk is big; it heartbeats."""
    return await run_activity(STORAGE_QUEUE, "storage.copy_root", req, RootDisk, timedelta(hours=2), COPY_HEARTBEAT)


async def prepare_root(req: RootCopy) -> RootDisk:
    return await run_activity(STORAGE_QUEUE, "storage.prepare_root", req, RootDisk)


async def drop_root(ref: RootDiskRef) -> None:
    await run_activity(STORAGE_QUEUE, "storage.drop_root", ref, timeout=timedelta(minutes=2))


async def update_record(update: VmRecordUpdate) -> None:
    await run_activity(INVENTORY_QUEUE, "inventory.update_vm", update)


# The fast path's few quick tries: an API that does not answer at once is waited for on the
# inventory's task queue instead, where the record waits as long as the API is away.
_RECORD_NOW_FINAL = ("not_found", "invalid_request")
_RECORD_NOW_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3,
                                non_retryable_error_types=list(_RECORD_NOW_FINAL))


async def record_now(update: VmRecordUpdate) -> None:
    """The record, asked of the API over NATS by the orchestrator itself (a local activity),
    within the workflow task: for the step that ends an operation a client waits on, no task
    queued for the API's worker to pick up. An API that does not answer gets the same record
    through its task queue; an answer of its own (the VM is gone) is final."""
    try:
        await workflow.execute_local_activity(
            "inventory.record_vm", update, start_to_close_timeout=timedelta(seconds=10),
            retry_policy=_RECORD_NOW_RETRY)
    except (ActivityError, ApplicationError) as exc:  # a local activity's failure may come bare
        code, _ = failure_message(exc)
        if code in _RECORD_NOW_FINAL:
            raise
        await update_record(update)


async def forget_record(ref: VmRef) -> None:
    await run_activity(INVENTORY_QUEUE, "inventory.forget_vm", ref)


async def begin_operation(req: BeginOperation) -> None:
    await run_activity(INVENTORY_QUEUE, "inventory.begin_operation", req)


async def settle_quota(changes: HoldChanges) -> None:
    await run_activity(INVENTORY_QUEUE, "inventory.settle_quota", changes)


async def vms_on_host(host_id: str) -> VmList:
    return await run_activity(INVENTORY_QUEUE, "inventory.vms_on_host", HostRef(host_id), VmList)


async def fence(req: FenceRequest, attempts: int) -> FenceResult:
    """Power the host off through its fence agent, retried with backoff (1, 2, 4, ... s);
    raises when every attempt failed."""
    return await run_activity(
        FENCING_QUEUE, "fence.run", req, FenceResult, timedelta(seconds=60),
        retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                                 maximum_interval=timedelta(seconds=8), maximum_attempts=attempts,
                                 non_retryable_error_types=["invalid_request"]),
    )


async def evict_domain(host_id: str, vm_id: str) -> None:
    await on_host(host_id, "host.evict_domain", DomainRef(vm_id))


async def define_domain(host_id: str, spec: DomainSpec) -> None:
    await on_host(host_id, "host.define_domain", spec)


async def create_domain(host_id: str, spec: DomainSpec) -> None:
    """Define the domain and start it."""
    await on_host(host_id, "host.create_domain", spec)


async def start_domain(host_id: str, vm_id: str) -> None:
    await on_host(host_id, "host.start_domain", DomainRef(vm_id))


async def undefine_domain(host_id: str, vm_id: str) -> None:
    await on_host(host_id, "host.undefine_domain", DomainRef(vm_id))


async def stop_domain(host_id: str, req: StopRequest) -> DomainStatus:
    return await on_host(
        host_id, "host.stop_domain", req, DomainStatus,
        timeout=timedelta(seconds=req.timeout_s + 30), heartbeat=_HOST_HEARTBEAT,
    )


async def reboot_domain(host_id: str, req: StopRequest) -> DomainStatus:
    return await on_host(
        host_id, "host.reboot_domain", req, DomainStatus,
        timeout=timedelta(seconds=req.timeout_s + 30), heartbeat=_HOST_HEARTBEAT,
    )


async def domain_status(host_id: str, req: BootWaitRequest) -> DomainStatus:
    return await on_host(host_id, "host.domain_status", req, DomainStatus)


async def probe_domain(host_id: str, vm_id: str) -> str | None:
    """The domain's state on the host ("absent" when it has none), None when the host does not
    answer within about a minute: for deciding after a failure, when waiting longer helps no one."""
    try:
        status = await on_host(host_id, "host.domain_status", BootWaitRequest(vm_id, 0), DomainStatus,
                               retry_policy=RetryPolicy(maximum_attempts=2))
    except ActivityError:
        return None
    return status.state


async def wait_booted(host_id: str, req: BootWaitRequest) -> DomainStatus:
    return await on_host(
        host_id, "host.wait_booted", req, DomainStatus, timedelta(seconds=req.timeout_s + 30), _HOST_HEARTBEAT,
        # A worker that died mid-wait is noticed by its missing heartbeats, and the wait goes on
        # on its successor. Under a burst of provisions the single-shard dev server was seen
        # recording heartbeats late, so more attempts follow a lost answer: the wait is
        # idempotent, and a guest that booted meanwhile answers at once. The host's own answers
        # (the boot deadline passed, the guest stopped) are final.
        retry_policy=RetryPolicy(maximum_attempts=4, non_retryable_error_types=["timeout", "hypervisor_error",
                                                                                 "not_found"]),
    )


async def migrate_domain(source_host_id: str, req: MigrateRequest) -> MigrateResult:
    """Runs on the source host. An answer is final (a failed migration leaves the VM on the
    source, and the workflow decides what comes next). Only a worker that went silent (its
    heartbeats stopped) gets another attempt, which follows libvirt's job if it still runs.
    Cancelling waits until libvirt's job is aborted."""
    return await on_host(
        source_host_id, "host.migrate_domain", req, MigrateResult,
        timedelta(seconds=req.policy.completion_timeout_s + 60), _HOST_HEARTBEAT,
        retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3,
                                 non_retryable_error_types=list(ERROR_CODES)),
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    )
