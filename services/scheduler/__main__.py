"""python -m services.scheduler"""

from __future__ import annotations

import asyncio

import structlog

from services.scheduler.monitor import LivenessMonitor, run_monitor
from services.scheduler.service import (
    Scheduler,
    follow_heartbeats,
    follow_host_admin,
    start_service,
)
from services.scheduler.settings import SchedulerSettings
from shared.lifecycle import run_until_signalled
from shared.logging import configure_logging
from shared.messaging import EventPublisher, connect, ensure_event_stream
from shared.metrics import serve_metrics
from shared.temporal import connect_temporal

log = structlog.get_logger("services.scheduler")


async def main(settings: SchedulerSettings) -> None:
    serve_metrics(settings.metrics_host, settings.metrics_port)
    nc = await connect(settings, "vmflow-scheduler")
    scheduler = Scheduler(settings)
    js = nc.jetstream()
    await ensure_event_stream(js, settings.event_stream)
    monitor = LivenessMonitor(scheduler, settings.liveness_policy(), EventPublisher(js, "scheduler"),
                              lambda: connect_temporal(settings, starts_workflows=True),
                              settings.failover_boot_timeout_s)
    watchers = [
        asyncio.create_task(follow_heartbeats(nc, settings, scheduler)),
        asyncio.create_task(follow_host_admin(nc, settings, scheduler)),
        asyncio.create_task(run_monitor(monitor, settings.liveness_interval_s)),
    ]
    service = await start_service(nc, scheduler)
    log.info("scheduler ready", nats=settings.nats_url)
    try:
        await run_until_signalled()
    finally:
        for watcher in watchers:
            watcher.cancel()
        await service.stop()
        await nc.drain()


if __name__ == "__main__":
    settings = SchedulerSettings()
    configure_logging("scheduler", settings.log_level, settings.log_json)
    asyncio.run(main(settings))
