"""Activities through which workflows update the inventory the API owns (task queue
``inventory``). Each also publishes what changed, so SSE clients follow every operation."""

from __future__ import annotations

import asyncio

from temporalio import activity

from services.api.db import Inventory
from services.api.models import vm_summary
from services.api.quota_store import QuotaLedger
from shared import events
from shared.errors import Conflict, NotFound
from shared.messaging import EventPublisher
from shared.models import (
    BeginOperation,
    GroupRule,
    HostRef,
    VmList,
    VmRecordUpdate,
    VmRef,
)
from shared.quota import HoldChanges


class InventoryActivities:
    def __init__(self, inventory: Inventory, events: EventPublisher, ledger: QuotaLedger) -> None:
        self._inventory = inventory
        self._events = events
        self._ledger = ledger

    @activity.defn(name="inventory.settle_quota")
    async def settle_quota(self, changes: HoldChanges) -> None:
        """Commit and release quota holds at an operation's end. Idempotent."""
        await asyncio.to_thread(self._ledger.settle, changes.commit, changes.release)

    @activity.defn(name="inventory.update_vm")
    async def update_vm(self, update: VmRecordUpdate) -> None:
        await self.record(update)

    async def record(self, update: VmRecordUpdate) -> None:
        """Idempotent. Raises NotFound when the VM has no row any more: the workflow holding it
        must not carry on (and leave a domain or a disk no row owns). Also served over NATS
        (``services.api.inventory_service``)."""
        fields: dict[str, object] = {"last_operation_id": update.op_id}
        if update.state is not None:
            fields["state"] = update.state
            fields["error"] = update.error
        moved_from = update.from_host_id
        if update.host_id is not None:
            fields["host_id"] = update.host_id
            if moved_from is None:
                moved_from = (await asyncio.to_thread(self._inventory.get, update.vm_id)).host_id
        vm = await asyncio.to_thread(self._inventory.update, update.vm_id, **fields)
        if vm is None:
            raise NotFound(f"VM {update.vm_id} has no inventory row any more")
        told: list[tuple[events.Event, str]] = []
        if moved_from and moved_from != vm.host_id:
            told.append((events.VmMoved(vm.id, vm.tenant, moved_from, vm.host_id or "", update.op_id),
                         f"{update.op_id}-moved"))
        if update.state is not None:
            told.append((events.VmStateChanged(vm.id, vm.tenant, vm.state.value, vm.host_id, vm.error,
                                               f"operation {update.op_id}"), f"{update.op_id}-{update.step}-state"))
        outcome = update.step if update.step in ("succeeded", "failed") else "progress"
        told.append((events.OperationStep(update.op_id, vm.tenant, vm.id, update.step, update.error, outcome),
                     f"{update.op_id}-{update.step}"))
        # Sent in this order, each before the next; only their acknowledgements are awaited together.
        await asyncio.gather(*(events.publish(self._events, event, event_id=event_id) for event, event_id in told))

    @activity.defn(name="inventory.forget_vm")
    async def forget_vm(self, ref: VmRef) -> None:
        """Remove the VM's row; absent is fine. ``error`` set means provisioning failed."""
        vm = await asyncio.to_thread(self._inventory.remove, ref.vm_id)
        if vm is None:
            return
        outcome = "failed" if ref.error else "succeeded"
        await events.publish(self._events, events.VmDeleted(vm.id, vm.tenant, vm.name, ref.error or "deleted"),
                             event_id=f"{ref.op_id}-deleted")
        await events.publish(self._events, events.OperationStep(ref.op_id, vm.tenant, vm.id, outcome, ref.error,
                                                                outcome), event_id=f"{ref.op_id}-{outcome}")

    @activity.defn(name="inventory.begin_operation")
    async def begin_operation(self, req: BeginOperation) -> None:
        """Raises Conflict (not retried) when the VM is busy with another operation."""
        if not await asyncio.to_thread(
            self._inventory.begin_operation, req.vm_id, req.op_id, req.allowed, req.new_state
        ):
            raise Conflict(f"VM {req.vm_id} is busy with another operation or not in a state that allows it")

    @activity.defn(name="inventory.vms_on_host")
    async def vms_on_host(self, ref: HostRef) -> VmList:
        vms = await asyncio.to_thread(self._inventory.on_host, ref.host_id)
        groups = {}
        for vm in vms:
            if vm.placement_group_id and vm.placement_group_id not in groups:
                group = await asyncio.to_thread(self._inventory.get_group, vm.placement_group_id, vm.tenant)
                groups[group.id] = GroupRule(group.id, group.policy, group.hard)
        return VmList(tuple(vm_summary(vm, groups.get(vm.placement_group_id or "")) for vm in vms))
