"""Network operations: create and delete a network, plug a NIC into a VM and pull it out.

A network is made on a host only when a VM there needs it (``host.prepare_vm``), so creating one
records it and deleting one removes whatever any host still carries of it. Workflow ids:
``network-<id>-create|delete``, ``vm-<vm_id>-nic-attach|detach-<port_id>``.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from shared.guest import NicOpInput, VmRelease
    from shared.networks import NetworkOpInput

from workflows import network_steps
from workflows.saga import Saga
from workflows.storage_ops import StorageOperation


@workflow.defn(name="CreateNetwork")
class CreateNetwork(StorageOperation):
    kind = "network-create"

    @workflow.run
    async def run(self, inp: NetworkOpInput) -> str:
        async def body() -> str:
            self._progress.advance("activate")
            await network_steps.network_active(inp)
            return inp.network_id

        return await self._run(inp.tenant, f"network/{inp.network_id}", body)


@workflow.defn(name="DeleteNetwork")
class DeleteNetwork(StorageOperation):
    kind = "network-delete"

    @workflow.run
    async def run(self, inp: NetworkOpInput) -> str:
        """Remove the network's plumbing from every host that answers (one that does not removes
        what no VM uses when its worker starts), then its row and its DHCP port."""

        async def body() -> str:
            self._progress.advance("unplumb")
            hosts = await network_steps.hosts_up(inp)
            results = await asyncio.gather(*(network_steps.remove_network(h, inp) for h in hosts),
                                           return_exceptions=True)
            for host_id, result in zip(hosts, results):
                if isinstance(result, BaseException):
                    workflow.logger.warning("network %s left on %s: %s", inp.network_id, host_id, result)
            self._progress.advance("forget")
            await network_steps.forget_network(inp)
            return inp.network_id

        return await self._run(inp.tenant, f"network/{inp.network_id}", body)


@workflow.defn(name="AttachNic")
class AttachNic(StorageOperation):
    kind = "nic-attach"

    @workflow.run
    async def run(self, inp: NicOpInput) -> str:
        """Make the network ready on the VM's host, plug the NIC (the running guest sees it
        appear), mark the port attached. A failure pulls the NIC and frees the address."""

        async def body() -> str:
            saga = Saga()
            try:
                saga.on_failure("free address", lambda: network_steps.forget_port(inp.vm_id, inp.port_id))
                self._progress.advance("prepare")
                change = await network_steps.nic_change(inp.vm_id, inp.port_id)
                self._progress.advance("plug")
                saga.on_failure("pull NIC", lambda: network_steps.detach_nic(inp.host_id, change))
                await network_steps.attach_nic(inp.host_id, change)
                self._progress.advance("record")
                await network_steps.port_attached(inp.port_id, True)
                return inp.port_id
            except BaseException:
                await saga.compensate()
                await network_steps.release_host(inp.host_id, VmRelease(inp.vm_id))
                raise

        return await self._run(inp.tenant, f"port/{inp.port_id}", body, inp.vm_id, inp.host_id)


@workflow.defn(name="DetachNic")
class DetachNic(StorageOperation):
    kind = "nic-detach"

    @workflow.run
    async def run(self, inp: NicOpInput) -> str:
        """Pull the NIC (waiting for a running guest to let go), free its address, and remove the
        network from the host if nothing else there uses it."""

        async def body() -> str:
            self._progress.advance("unplug")
            change = await network_steps.nic_change(inp.vm_id, inp.port_id)
            await network_steps.port_attached(inp.port_id, False)
            await network_steps.detach_nic(inp.host_id, change)
            self._progress.advance("free")
            await network_steps.forget_port(inp.vm_id, inp.port_id)
            await network_steps.release_host(inp.host_id, VmRelease(inp.vm_id))
            return inp.port_id

        return await self._run(inp.tenant, f"port/{inp.port_id}", body, inp.vm_id, inp.host_id)


NETWORK_WORKFLOWS = [CreateNetwork, DeleteNetwork, AttachNic, DetachNic]
