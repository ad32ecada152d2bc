"""The FastAPI application. Connections are opened in the lifespan, once, and the inventory
activities run in the same process because the API owns the inventory tables."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import Depends, FastAPI
from sqlalchemy.engine import Engine
from temporalio.worker import Worker

from services.api.audit import AuditLog, AuditMiddleware
from services.api.db import Inventory, make_engine, migrate
from services.api.errors import install_error_handlers
from services.api.event_fanout import EventFanout
from services.api.identity_store import IdentityStore
from services.api.inventory_activities import InventoryActivities
from services.api.inventory_service import inventory_service
from services.api.network_activities import NetworkActivities
from services.api.network_store import NetworkStore
from services.api.platform import Platform
from services.api.policy import authorize
from services.api.quota_store import QuotaLedger
from services.api.reality import RealityFollower, follow_host_reports, follow_lifecycle
from services.api.routes import (
    audit,
    console,
    docs,
    events,
    health,
    hosts,
    images,
    metrics,
    networks,
    nics,
    operations,
    placement_groups,
    pools,
    snapshots,
    tenants,
    tokens,
    vms,
    volumes,
)
from services.api.settings import ApiSettings
from services.portal.app import PortalMount, create_portal
from services.portal.session import CookiePolicy
from services.scheduler.client import SchedulerClient
from services.storage.client import StorageClient
from shared.messaging import EventPublisher, connect, ensure_event_stream
from shared.names import INVENTORY_QUEUE
from shared.temporal import ActivityContext, connect_temporal

log = structlog.get_logger(__name__)


async def _open_platform(settings: ApiSettings) -> tuple[Platform, Engine]:
    """The database (migrated; the first admin token made when asked), NATS and Temporal,
    connected once for the API's lifetime."""
    engine = make_engine(settings.database_url)
    await asyncio.to_thread(migrate, engine)
    identities = IdentityStore(engine, settings.token_cache_s)
    if settings.admin_token_file and await asyncio.to_thread(identities.ensure_admin_token,
                                                             Path(settings.admin_token_file)):
        log.info("admin token written", path=settings.admin_token_file)
    nc = await connect(settings, "vmflow-api")
    await ensure_event_stream(nc.jetstream(), settings.event_stream, settings.jetstream_replicas)
    platform = Platform(
        settings=settings,
        inventory=Inventory(engine),
        nats=nc,
        temporal=await connect_temporal(settings, starts_workflows=True),
        events=EventPublisher(nc.jetstream(), "api"),
        scheduler=SchedulerClient(nc, settings.request_timeout_s),
        storage=StorageClient(nc, settings.request_timeout_s),
        network_store=NetworkStore(engine),
        identities=identities,
        ledger=QuotaLedger(engine),
        audit=AuditLog(engine),
        streams=EventFanout(nc),
    )
    return platform, engine


def _inventory_worker(p: Platform, activities: InventoryActivities) -> Worker:
    """The worker of the activities through which workflows change the inventory."""
    network_activities = NetworkActivities(p.network_store, p.inventory, p.scheduler)
    return Worker(
        p.temporal,
        task_queue=INVENTORY_QUEUE,
        activities=[activities.update_vm, activities.forget_vm, activities.begin_operation,
                    activities.vms_on_host, activities.settle_quota, *network_activities.all()],
        interceptors=[ActivityContext()],
    )


def create_app(settings: ApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        p, engine = await _open_platform(settings)
        app.state.platform = p
        activities = InventoryActivities(p.inventory, p.events, p.ledger)
        worker = _inventory_worker(p, activities)
        run = asyncio.create_task(worker.run())
        records = await inventory_service(p.nats, activities)
        follower = RealityFollower(p.inventory, p.events, p.temporal, settings.boot_timeout_s)
        js = p.nats.jetstream()
        followers = [
            asyncio.create_task(follow_lifecycle(js, settings.event_stream, follower)),
            asyncio.create_task(follow_host_reports(js, settings.heartbeat_bucket, follower, settings.jetstream_replicas)),
        ]
        log.info("api ready", database=settings.database_url.split("://")[0])
        try:
            yield
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            await records.stop()
            await worker.shutdown()
            run.cancel()
            try:
                await asyncio.wait_for(p.nats.drain(), 5)
            except asyncio.TimeoutError:
                await p.nats.close()
            engine.dispose()

    app = FastAPI(
        title="vmflow",
        version="0.1.0",
        description="Virtual machines across a fleet of KVM hosts.",
        lifespan=lifespan,
        dependencies=[Depends(authorize)],
        openapi_url=None, docs_url=None, redoc_url=None,  # routes.docs serves them, behind the token check
    )
    app.add_middleware(AuditMiddleware)
    install_error_handlers(app)
    for router in (vms.router, nics.router, networks.router, placement_groups.router, hosts.router,
                   operations.router, images.router, pools.router, volumes.router, snapshots.router, events.router,
                   health.router, console.router, tenants.router, tokens.router, audit.router, metrics.router, docs.router):
        app.include_router(router)
    # Last: every path the API's routes do not take is the portal's.
    app.router.routes.append(PortalMount(create_portal(app, CookiePolicy(settings.portal_session_s,
                                                                         settings.portal_secure_cookie))))
    return app
