"""python -m services.scheduler"""

from __future__ import annotations

import asyncio
import functools

import structlog
from temporalio.client import Client

from services.scheduler.monitor import LivenessMonitor, run_monitor
from services.scheduler.service import (
    Buckets,
    claim_placer,
    follow_claims,
    follow_heartbeats,
    follow_host_admin,
    start_service,
)
from services.scheduler.settings import SchedulerSettings
from services.scheduler.state import Scheduler
from shared.errors import VmflowError
from shared.lifecycle import run_until_signalled
from shared.logging import configure_logging
from shared.messaging import EventPublisher, connect, ensure_event_stream
from shared.metrics import serve_metrics
from shared.temporal import connect_temporal

log = structlog.get_logger("services.scheduler")


async def _connect_for_failover(settings: SchedulerSettings) -> Client:
    """Failovers must start whatever state the search attributes are in: a namespace where they
    cannot be registered (or clash) is logged, and the monitor starts failovers untagged."""
    try:
        return await connect_temporal(settings, starts_workflows=True)
    except VmflowError as exc:
        log.error("search attributes not registered; failovers start untagged", error=exc.message)
        return await connect_temporal(settings)


async def main(settings: SchedulerSettings) -> None:
    serve_metrics(settings.metrics_host, settings.metrics_port)
    nc = await connect(settings, "vmflow-scheduler")
    scheduler = Scheduler(settings)
    js = nc.jetstream()
    await ensure_event_stream(js, settings.event_stream, settings.jetstream_replicas)
    monitor = LivenessMonitor(scheduler, settings.liveness_policy(), EventPublisher(js, "scheduler", patience_s=1.0),
                              functools.partial(_connect_for_failover, settings), settings.failover_boot_timeout_s)
    placer = await claim_placer(nc, scheduler)
    mirrored = Buckets()
    watchers = [
        asyncio.create_task(follow_heartbeats(nc, settings, scheduler, placer, mirrored.heartbeats)),
        asyncio.create_task(follow_host_admin(nc, settings, scheduler, mirrored.admin)),
        asyncio.create_task(follow_claims(nc, settings, scheduler, mirrored.claims)),
        asyncio.create_task(monitor.connect()),  # in the background: the scheduler never waits on Temporal
    ]
    await mirrored.wait()  # answer nothing before the hosts, their modes and every replica's claims are in
    watchers.append(asyncio.create_task(run_monitor(monitor, settings.liveness_interval_s)))
    service = await start_service(nc, scheduler, placer)
    log.info("scheduler ready", nats=settings.nats_url, hosts=len(scheduler.heartbeats))
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
