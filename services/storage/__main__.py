"""python -m services.storage"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from nats.micro import add_service
from nats.micro.service import ServiceConfig
from temporalio.worker import Worker

from services.storage.activities import StorageActivities, locate_root
from services.storage.catalog import ImageCatalog
from services.storage.data_volumes import VolumeStore
from services.storage.endpoints import StorageEndpoints
from services.storage.image_activities import ImageActivities
from services.storage.image_checks import ImageLimits
from services.storage.images import ImageStore
from services.storage.pools import PoolRegistry
from services.storage.settings import StorageSettings
from services.storage.snapshots import VmSnapshots
from services.storage.volume_activities import VolumeActivities
from services.storage.volumes import RootVolumes
from shared import subjects
from shared.lifecycle import run_until_signalled
from shared.logging import configure_logging
from shared.messaging import EventPublisher, connect, ensure_event_stream
from shared.metrics import serve_metrics
from shared.temporal import ActivityContext, connect_temporal

log = structlog.get_logger("services.storage")


async def main(settings: StorageSettings) -> None:
    serve_metrics(settings.metrics_host, settings.metrics_port)
    pools = PoolRegistry.from_settings(settings.pool_name, settings.pool_dir, settings.local_pools)
    pools.ensure_dirs()
    shared = pools.shared
    catalog = ImageCatalog(shared.images_dir)
    roots = RootVolumes(pools, catalog)
    root_disk_of = roots.disk_of

    import_dirs = [Path(d) for d in settings.import_dirs] or [shared.path / "incoming"]
    for directory in import_dirs:
        directory.mkdir(parents=True, exist_ok=True)
    limits = ImageLimits(settings.max_image_virtual_gib, settings.max_image_file_gib)
    images = ImageStore(shared, catalog, limits, import_dirs)
    volumes = VolumeStore(pools, catalog, settings.max_volume_gib)
    snapshots = VmSnapshots(root_disk_of, volumes, settings.qemu_img_timeout_s)

    nc = await connect(settings, "vmflow-storage")
    js = nc.jetstream()
    await ensure_event_stream(js, settings.event_stream, settings.jetstream_replicas)
    events = EventPublisher(js, "storage")
    root_activities = StorageActivities(roots, volumes, events)
    image_activities = ImageActivities(shared.name, images, volumes, root_disk_of, events)
    volume_activities = VolumeActivities(volumes, snapshots, events)

    service = await add_service(
        nc, ServiceConfig(name=subjects.STORAGE_SERVICE, version="0.2.0", queue_group="vmflow-storage")
    )
    await StorageEndpoints(pools, catalog, images, volumes, snapshots, root_disk_of,
                           lambda vm_id: locate_root(roots, volumes, vm_id)).register(service)

    client = await connect_temporal(settings)
    worker = Worker(
        client,
        task_queue="storage",
        activities=[
            root_activities.create_volume,
            root_activities.delete_volume,
            root_activities.locate_root,
            root_activities.copy_root,
            root_activities.prepare_root,
            root_activities.drop_root,
            image_activities.import_image,
            image_activities.create_template,
            image_activities.delete_image,
            volume_activities.create_data_volume,
            volume_activities.resize_volume,
            volume_activities.delete_data_volume,
            volume_activities.claim_volume,
            volume_activities.confirm_attachment,
            volume_activities.release_volume,
            volume_activities.create_snapshot,
            volume_activities.revert_snapshot,
            volume_activities.delete_snapshot,
            volume_activities.report_operation,
        ],
        interceptors=[ActivityContext()],
    )
    run = asyncio.create_task(worker.run())
    log.info("storage ready", pools=[p.name for p in pools.all()], pool_dir=str(shared.path))
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
