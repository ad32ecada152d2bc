"""python -m services.fencing: the fencer, a worker on the ``fencing`` task queue."""

from __future__ import annotations

import asyncio

import structlog
from temporalio.worker import Worker

from services.fencing.activities import FenceActivities
from services.fencing.settings import FencerSettings
from shared.logging import configure_logging
from shared.messaging import EventPublisher, connect, ensure_event_stream
from shared.metrics import serve_metrics
from shared.names import FENCING_QUEUE
from shared.temporal import ActivityContext, connect_temporal, serve

log = structlog.get_logger("services.fencing")


async def main(settings: FencerSettings) -> None:
    serve_metrics(settings.metrics_host, settings.metrics_port)
    nc = await connect(settings, "vmflow-fencer")
    js = nc.jetstream()
    await ensure_event_stream(js, settings.event_stream, settings.jetstream_replicas)
    fencer = FenceActivities(settings, EventPublisher(js, "fencer"))
    client = await connect_temporal(settings)
    worker = Worker(client, task_queue=FENCING_QUEUE, activities=[fencer.run], interceptors=[ActivityContext()])
    log.info("fencer ready", config=settings.fence_config)
    await serve(worker, nc)


if __name__ == "__main__":
    settings = FencerSettings()
    configure_logging("fencer", settings.log_level, settings.log_json)
    asyncio.run(main(settings))
