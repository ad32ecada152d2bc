"""Connections the API holds for its lifetime, built once and handed to the routes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import Header, Request
from nats.aio.client import Client as NatsClient
from starlette.requests import HTTPConnection
from temporalio.client import Client as TemporalClient

from services.api.db import Inventory
from services.api.network_store import NetworkStore
from services.api.settings import ApiSettings
from services.scheduler.client import SchedulerClient
from services.storage.client import StorageClient
from shared.errors import InvalidRequest
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


def get_platform(request: Request) -> Platform:
    return request.app.state.platform


_TENANT_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def current_tenant(connection: HTTPConnection, x_vmflow_tenant: str | None = Header(default=None)) -> str:
    """The tenant a request (or a websocket) acts for: the X-Vmflow-Tenant header, else the
    configured default. Authentication (tokens scoped to a tenant) will replace the header.
    Raises InvalidRequest for a malformed tenant name."""
    if x_vmflow_tenant is None:
        return connection.app.state.platform.settings.default_tenant
    if not _TENANT_PATTERN.fullmatch(x_vmflow_tenant):
        raise InvalidRequest("X-Vmflow-Tenant: 1-63 lower-case letters, digits or '-'")
    return x_vmflow_tenant
