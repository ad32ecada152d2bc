"""The inventory's one command over NATS: record a VM's update the way the ``inventory.update_vm``
activity does. The orchestrator calls it from a local activity for the step that ends an
operation a client waits on (a migration's record), which then needs no task queued and
picked up; every API replica answers, in one queue group."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from services.api.inventory_activities import InventoryActivities
from shared import subjects
from shared.messaging import endpoint
from shared.models import VmRecordUpdate

RECORDED = {"recorded": True}


async def inventory_service(nc: NatsClient, activities: InventoryActivities) -> Service:
    async def update_vm(update: VmRecordUpdate) -> dict:
        await activities.record(update)
        return RECORDED

    service = await add_service(nc, ServiceConfig(
        name=subjects.INVENTORY_SERVICE, version="0.1.0", description="vmflow inventory records",
        queue_group="vmflow-inventory"))
    group = service.add_group(name=subjects.INVENTORY_PREFIX)
    await group.add_endpoint(EndpointConfig(name="update_vm", handler=endpoint(VmRecordUpdate, update_vm,
                                                                                concurrent=True)))
    return service
