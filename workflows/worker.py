"""The orchestrator worker: runs every workflow, plus the thin activities that reach the
scheduler over NATS (workflow code itself never does I/O)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import (
    SandboxedWorkflowRunner,
    SandboxRestrictions,
)

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
from workflows.provision import ProvisionVm
from workflows.restart import RestartVm
from workflows.stale import RemoveStaleCopy
from workflows.storage_ops import STORAGE_WORKFLOWS

WORKFLOWS = [ProvisionVm, DeleteVm, VmPowerAction, LiveMigrate, HostMaintenance, RestartVm, HostFailover,
             RemoveStaleCopy, *STORAGE_WORKFLOWS, *NETWORK_WORKFLOWS]


# The modules workflows use but that are not workflow code (models, names, the scheduler's
# client) enter each run's sandbox as they are, imported once, instead of being imported anew for
# every run. The workflow modules themselves are still imported into each run's sandbox, which
# keeps guarding what their code calls.
RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("shared", "services"))


def orchestrator_worker(client: Client, scheduler: SchedulerActivities) -> Worker:
    return Worker(
        client,
        task_queue=ORCHESTRATOR_QUEUE,
        workflows=WORKFLOWS,
        workflow_runner=RUNNER,
        activities=[scheduler.place, scheduler.release, scheduler.set_host_admin],
        interceptors=[ActivityContext(), OperationMetrics()],
    )
