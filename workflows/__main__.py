"""python -m workflows: the orchestrator worker."""

from __future__ import annotations

import asyncio

import structlog

from services.scheduler.client import SchedulerActivities, SchedulerClient
from shared.lifecycle import run_until_signalled
from shared.logging import configure_logging
from shared.messaging import connect
from shared.settings import CommonSettings
from shared.temporal import connect_temporal
from workflows.worker import orchestrator_worker

log = structlog.get_logger("workflows")


async def main(settings: CommonSettings) -> None:
    nc = await connect(settings, "vmflow-orchestrator")
    client = await connect_temporal(settings)
    worker = orchestrator_worker(client, SchedulerActivities(SchedulerClient(nc)))
    run = asyncio.create_task(worker.run())
    log.info("orchestrator ready", temporal=settings.temporal_address)
    try:
        await run_until_signalled()
    finally:
        await worker.shutdown()
        run.cancel()
        await nc.drain()


if __name__ == "__main__":
    settings = CommonSettings()
    configure_logging("orchestrator", settings.log_level, settings.log_json)
    asyncio.run(main(settings))
