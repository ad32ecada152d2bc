"""Reaching the inventory's NATS command from the orchestrator, and the local activity that lets
a workflow record an operation's end through it (``workflows.steps.record_now``)."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from temporalio import activity

from shared import subjects
from shared.messaging import request
from shared.models import VmRecordUpdate


class InventoryClient:
    def __init__(self, nc: NatsClient, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s

    async def update_vm(self, update: VmRecordUpdate) -> None:
        """Raises NotFound (the VM has no row), ServiceUnavailable (no API answers) or Timeout."""
        await request(self._nc, f"{subjects.INVENTORY_PREFIX}.update_vm", update, dict, self._timeout_s)


class InventoryRecordActivity:
    """Run by the orchestrator worker, as a local activity."""

    def __init__(self, client: InventoryClient) -> None:
        self._client = client

    @activity.defn(name="inventory.record_vm")
    async def record_vm(self, update: VmRecordUpdate) -> None:
        await self._client.update_vm(update)
