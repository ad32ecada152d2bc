"""python -m services.storage"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from nats.micro import add_service
from nats.micro.service import EndpointConfig, ServiceConfig
from temporalio.worker import Worker

from services.storage.activities import StorageActivities
from services.storage.catalog import ImageCatalog
from services.storage.settings import StorageSettings
from services.storage.volumes import VolumePool
from shared import subjects
from shared.lifecycle import run_until_signalled
from shared.logging import configure_logging
from shared.messaging import EventPublisher, connect, endpoint, ensure_event_stream
from shared.models import Image, ImageList, ImageRef
from shared.temporal import ActivityContext, connect_temporal

log = structlog.get_logger("services.storage")


async def main(settings: StorageSettings) -> None:
    pool_dir = Path(settings.pool_dir)
    catalog = ImageCatalog(pool_dir / "images")
    pool = VolumePool(settings.pool_name, pool_dir, catalog)

    nc = await connect(settings, "vmflow-storage")
    js = nc.jetstream()
    await ensure_event_stream(js, settings.event_stream)
    activities = StorageActivities(pool, EventPublisher(js, "storage"))

    async def list_images(_: None) -> ImageList:
        return ImageList(tuple(await asyncio.to_thread(catalog.list)))

    async def get_image(ref: ImageRef) -> Image:
        return await asyncio.to_thread(catalog.get, ref.name)

    service = await add_service(
        nc, ServiceConfig(name=subjects.STORAGE_SERVICE, version="0.1.0", queue_group="vmflow-storage")
    )
    group = service.add_group(name=subjects.STORAGE_PREFIX)
    await group.add_endpoint(EndpointConfig(name="images", handler=endpoint(type(None), list_images)))
    await group.add_endpoint(EndpointConfig(name="image", handler=endpoint(ImageRef, get_image)))

    client = await connect_temporal(settings)
    worker = Worker(
        client,
        task_queue="storage",
        activities=[activities.create_volume, activities.delete_volume],
        interceptors=[ActivityContext()],
    )
    run = asyncio.create_task(worker.run())
    log.info("storage ready", pool=settings.pool_name, pool_dir=str(pool_dir))
    try:
        await run_until_signalled()
    finally:
        await worker.shutdown()
        run.cancel()
        await service.stop()
        await nc.drain()


if __name__ == "__main__":
    settings = StorageSettings()
    configure_logging("storage", settings.log_level, settings.log_json)
    asyncio.run(main(settings))
