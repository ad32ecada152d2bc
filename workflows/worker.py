"""The orchestrator worker: runs every workflow, plus the thin activities that reach the
scheduler and the inventory over NATS (workflow code itself never does I/O)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import (
    SandboxedWorkflowRunner,
    SandboxRestrictions,
)

from services.api.inventory_client import InventoryRecordActivity
from services.scheduler.client import SchedulerActivities
from shared.names import ORCHESTRATOR_QUEUE
from shared.temporal import ActivityContext
from workflows.delete import DeleteVm
from workflows.failover import HostFailover
from workflows.maintenance import HostMaintenance
from workflows.metering import OperationMetrics
from workflows.migrate import LiveMigrate
from workflows.networks import NETWORK_WORKFLOWS
from workflows.power import VmPowerAction
from workflows.progress import FinalProgress
from workflows.provision import ProvisionVm
from workflows.restart import RestartVm
from workflows.stale import RemoveStaleCopy
from workflows.storage_ops import STORAGE_WORKFLOWS

WORKFLOWS = [ProvisionVm, DeleteVm, VmPowerAction, LiveMigrate, HostMaintenance, RestartVm, HostFailover,
             RemoveStaleCopy, *STORAGE_WORKFLOWS, *NETWORK_WORKFLOWS]


def workflow_runner(sandboxed: bool) -> WorkflowRunner:
    """Sandboxed: the modules workflows use but that are not workflow code (models, names, the
    scheduler's client) enter each run's sandbox as they are, imported once; the workflow modules
    themselves are imported into each run's sandbox, which guards what their code calls."""
    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("shared", "services"))


def orchestrator_worker(client: Client, scheduler: SchedulerActivities, inventory: InventoryRecordActivity, *,
                        sandboxed: bool) -> Worker:
    return Worker(
        client,
        task_queue=ORCHESTRATOR_QUEUE,
        workflows=WORKFLOWS,
        workflow_runner=workflow_runner(sandboxed),
        activities=[scheduler.place, scheduler.release, scheduler.set_host_admin, inventory.record_vm],
        interceptors=[ActivityContext(), OperationMetrics(), FinalProgress()],
    )
