"""Connections the API holds for its lifetime, built once and handed to the routes."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from nats.aio.client import Client as NatsClient
from temporalio.client import Client as TemporalClient

from services.api.audit import AuditLog
from services.api.db import Inventory
from services.api.event_fanout import EventFanout
from services.api.identity_store import IdentityStore
from services.api.network_store import NetworkStore
from services.api.quota_store import QuotaLedger
from services.api.settings import ApiSettings
from services.scheduler.client import SchedulerClient
from services.storage.client import StorageClient
from shared.messaging import EventPublisher


@dataclass
class Platform:
    settings: ApiSettings
    inventory: Inventory
    nats: NatsClient
    temporal: TemporalClient
    events: EventPublisher
    scheduler: SchedulerClient
    storage: StorageClient
    network_store: NetworkStore
    identities: IdentityStore
    ledger: QuotaLedger
    audit: AuditLog
    streams: EventFanout  # what the SSE streams follow


async def get_platform(request: Request) -> Platform:
    return request.app.state.platform
