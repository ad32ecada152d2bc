"""Temporal activities of one host for what its guests need besides a domain: networks, seeds,
NICs (task queue ``host.<host_id>``). Each is idempotent."""

from __future__ import annotations

import asyncio
import time

import structlog
from temporalio import activity

from services.host_worker.guest_setup import GuestSetup
from services.host_worker.hypervisor import Hypervisor
from shared.errors import Timeout
from shared.guest import NicChange, VmRelease, VmSetup
from shared.networks import NetworkOpInput

log = structlog.get_logger(__name__)

_UNPLUG_TIMEOUT_S = 30.0  # the guest's kernel acknowledges a PCI unplug in well under a second


class GuestActivities:
    def __init__(self, hypervisor: Hypervisor, setup: GuestSetup) -> None:
        self._hv = hypervisor
        self._setup = setup

    def all(self) -> list:
        return [self.prepare_vm, self.release_vm, self.attach_nic, self.detach_nic, self.remove_network]

    @activity.defn(name="host.prepare_vm")
    async def prepare_vm(self, setup: VmSetup) -> None:
        """The VM's networks (bridge, tunnel, DHCP with its address) and its seed are here."""
        await self._setup.prepare(setup)

    @activity.defn(name="host.release_vm")
    async def release_vm(self, release: VmRelease) -> None:
        await self._setup.release(release)

    @activity.defn(name="host.attach_nic")
    async def attach_nic(self, change: NicChange) -> None:
        """The NIC's network is made ready here, then the NIC is plugged in (live and in the
        definition). Raises NotFound (no such domain), HypervisorError."""
        await self._setup.plug(change.vm_id, change.networks)
        await asyncio.to_thread(self._hv.attach_interface, change.vm_id, change.nic)

    @activity.defn(name="host.detach_nic")
    async def detach_nic(self, change: NicChange) -> None:
        """Pull the NIC out of the definition and the running guest, waiting until the guest has
        let go. Raises Timeout when it does not within ``_UNPLUG_TIMEOUT_S``."""
        await asyncio.to_thread(self._hv.detach_interface, change.vm_id, change.nic)
        deadline = time.monotonic() + _UNPLUG_TIMEOUT_S
        while await asyncio.to_thread(self._hv.has_live_interface, change.vm_id, change.nic.mac):
            if time.monotonic() > deadline:
                raise Timeout(f"the guest did not release NIC {change.nic.mac} within {_UNPLUG_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)

    @activity.defn(name="host.remove_network")
    async def remove_network(self, inp: NetworkOpInput) -> None:
        await self._setup.remove_network(inp.vni)
