"""Activities through which workflows read and change networks and ports in the inventory (task
queue ``inventory``, served by the API, which owns those tables)."""

from __future__ import annotations

import asyncio

from temporalio import activity

from services.api.db import Inventory
from services.api.network_models import NetworkState
from services.api.network_store import NetworkStore
from services.scheduler.client import SchedulerClient
from shared.guest import NicChange, NicRef, SeedSpec, VmSetup, VmSetupRequest
from shared.networks import HostIds, NetworkOpInput, PortAttached


def vm_setup(inventory: Inventory, store: NetworkStore, vm_id: str) -> VmSetup:
    """What a host must prepare for the VM: its attached NICs, their networks with every port's
    DHCP entry, and its seed (None when it asked for none). Raises NotFound."""
    vm = inventory.get(vm_id)
    nics = tuple(store.nic_specs(vm_id))
    networks = tuple(store.plumbing(network_id) for network_id in dict.fromkeys(n.network_id for n in nics))
    seed = None
    if vm.hostname or vm.user_data or vm.ssh_authorized_keys:
        seed = SeedSpec(vm.id, vm.hostname or vm.name.lower(), vm.user_data, tuple(vm.ssh_authorized_keys),
                        tuple(n.mac for n in nics))
    return VmSetup(vm_id, nics, networks, seed)


class NetworkActivities:
    def __init__(self, store: NetworkStore, inventory: Inventory, scheduler: SchedulerClient) -> None:
        self._store = store
        self._inventory = inventory
        self._scheduler = scheduler

    def all(self) -> list:
        return [self.vm_setup, self.network_active, self.forget_network, self.hosts_up, self.port_attached,
                self.forget_port, self.nic_change]

    @activity.defn(name="inventory.vm_setup")
    async def vm_setup(self, req: VmSetupRequest) -> VmSetup:
        """What a host must prepare for the VM now: its attached NICs, their networks with every
        port's DHCP entry, and its seed (None when it asked for none). Raises NotFound."""
        return await asyncio.to_thread(vm_setup, self._inventory, self._store, req.vm_id)

    @activity.defn(name="inventory.network_active")
    async def network_active(self, inp: NetworkOpInput) -> None:
        await asyncio.to_thread(self._store.set_network_state, inp.network_id, NetworkState.ACTIVE)

    @activity.defn(name="inventory.forget_network")
    async def forget_network(self, inp: NetworkOpInput) -> None:
        """Delete the network and its DHCP port. Idempotent."""
        await asyncio.to_thread(self._store.remove_network, inp.network_id)

    @activity.defn(name="inventory.hosts_up")
    async def hosts_up(self, _inp: NetworkOpInput) -> HostIds:
        hosts = await self._scheduler.hosts()
        return HostIds(tuple(h.host_id for h in hosts.hosts if h.state != "down"))

    @activity.defn(name="inventory.port_attached")
    async def port_attached(self, change: PortAttached) -> None:
        await asyncio.to_thread(self._store.set_attached, change.port_id, change.attached)

    @activity.defn(name="inventory.forget_port")
    async def forget_port(self, ref: NicRef) -> None:
        """Release the port's address. Idempotent."""
        await asyncio.to_thread(self._store.remove_port, ref.port_id)

    @activity.defn(name="inventory.nic_change")
    async def nic_change(self, ref: NicRef) -> NicChange:
        """The NIC as its host needs it (attached or not) with its network's plumbing, every
        port's DHCP entry included. Raises NotFound."""
        return await asyncio.to_thread(self._nic_change, ref)

    def _nic_change(self, ref: NicRef) -> NicChange:
        nic = self._store.nic_spec(ref.vm_id, ref.port_id)
        return NicChange(ref.vm_id, nic, (self._store.plumbing(nic.network_id),))
