"""python -m workflows: the orchestrator worker."""

from __future__ import annotations

import asyncio

import structlog

from services.api.inventory_client import InventoryClient, InventoryRecordActivity
from services.scheduler.client import SchedulerActivities, SchedulerClient
from shared.logging import configure_logging
from shared.messaging import connect
from shared.metrics import serve_metrics
from shared.temporal import connect_temporal, serve
from workflows.settings import OrchestratorSettings
from workflows.worker import orchestrator_worker

log = structlog.get_logger("workflows")


async def main(settings: OrchestratorSettings) -> None:
    serve_metrics(settings.metrics_host, settings.metrics_port)
    nc = await connect(settings, "vmflow-orchestrator")
    client = await connect_temporal(settings, starts_workflows=True)  # its workflows tag children and hosts
    worker = orchestrator_worker(client, SchedulerActivities(SchedulerClient(nc)),
                                  InventoryRecordActivity(InventoryClient(nc)), sandboxed=settings.workflow_sandbox)
    log.info("orchestrator ready", temporal=settings.temporal_address)
    await serve(worker, nc)


if __name__ == "__main__":
    settings = OrchestratorSettings()
    configure_logging("orchestrator", settings.log_level, settings.log_json)
    asyncio.run(main(settings))
